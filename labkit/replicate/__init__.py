"""Replication commands: the kit's methods run on the papers' public benchmarks and on a user's own files.

``labkit.replicate.detune`` — Spectral DeTuning on LoWRA Bench, or on a set of fine-tuned checkpoints
(``labkit detune``).
``labkit.replicate.dsire`` — DSiRe with the paper's protocol on a LoRA-WiSE config (``labkit dsire``).
``labkit.replicate.probex`` — ProbeX on one layer of a Model-J discriminative subset (``labkit probex``).
``labkit.replicate.probegen`` — ProbeGen on the MNIST/FMNIST INR zoos or CIFAR10-GS (``labkit probegen``).
``labkit.replicate.trees`` — MoTHer on any folder of models, peft adapters merged (``labkit trees recover``).
"""

from __future__ import annotations

import torch


def command_device(device: str | torch.device | None) -> torch.device:
    """The device a command runs on: ``None``/"auto" → CUDA, else MPS, else CPU; a named device that this machine
    lacks is a one-line error telling the user to pass ``--device cpu``."""
    from labkit.session import pick_device

    dev = pick_device(str(device) if device else "auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev
