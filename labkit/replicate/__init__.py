"""Replication commands: the kit's methods run on the papers' public benchmarks and on a user's own files.

``labkit.replicate.detune`` — Spectral DeTuning on LoWRA Bench, or on a set of fine-tuned checkpoints
(``labkit detune``).
``labkit.replicate.dsire`` — DSiRe with the paper's protocol on a LoRA-WiSE config (``labkit dsire``).
``labkit.replicate.probex`` — ProbeX on one layer of a Model-J discriminative subset (``labkit probex``).
``labkit.replicate.probegen`` — ProbeGen on the MNIST/FMNIST INR zoos or CIFAR10-GS (``labkit probegen``).
"""
