"""Replication commands: the kit's methods run on the papers' public benchmarks and on a user's own files.

``labkit.replicate.detune`` — Spectral DeTuning on LoWRA Bench, or on a set of fine-tuned checkpoints
(``labkit detune``).
"""
