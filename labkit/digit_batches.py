"""Mini-batch streams of 8×8 digits for training many models at once (labkit.training), with augmentation.

Every model draws its own mini-batches and augmentation from a generator seeded by its own seed
(``batch_schedule``), so what model k sees does not depend on which other models share its batch.
``digit_stream`` pads K such streams to the longest one and says at which steps each model is still training.
Augmentation (``augment_images``) is a random 1-pixel translation (the crop analogue) and additive pixel noise
drawn from a fixed bank, clamped to [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["NOISE_BANK_SIZE", "NOISE_STD", "DigitStream", "Schedule", "augment_images", "batch_schedule",
           "digit_stream"]

NOISE_BANK_SIZE = 1024
NOISE_STD = 0.1


@dataclass
class Schedule:
    """One model's training stream: ``idx: [T, B]`` rows of X, and per-sample shift / noise draws ``[T, B]``."""

    idx: torch.Tensor
    dx: torch.Tensor
    dy: torch.Tensor
    noise_idx: torch.Tensor


def batch_schedule(subset: torch.Tensor, epochs: int, batch_size: int, seed: int) -> Schedule:
    """Shuffled mini-batches of ``subset`` (row indices) for ``epochs`` epochs, dropping each epoch's last partial
    batch, plus augmentation draws — all from ``torch.Generator().manual_seed(seed)``."""
    n = len(subset)
    if n < batch_size:
        raise ValueError(f"a model's training set has {n} rows, fewer than the batch size {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    per_epoch = n // batch_size
    rows = [subset[torch.randperm(n, generator=gen)[:per_epoch * batch_size]] for _ in range(epochs)]
    idx = torch.cat(rows).view(-1, batch_size) if rows else torch.zeros(0, batch_size, dtype=torch.long)
    T = idx.shape[0]
    dx = torch.randint(-1, 2, (T, batch_size), generator=gen)
    dy = torch.randint(-1, 2, (T, batch_size), generator=gen)
    noise_idx = torch.randint(0, NOISE_BANK_SIZE, (T, batch_size), generator=gen)
    return Schedule(idx, dx, dy, noise_idx)


@functools.lru_cache(maxsize=4)
def _noise_bank(dim: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return (NOISE_STD * torch.randn(NOISE_BANK_SIZE, dim, generator=gen)).to(device)


def augment_images(X: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, noise_idx: torch.Tensor,
                   shift: torch.Tensor, noise: torch.Tensor, side: int = 8) -> torch.Tensor:
    """Digit augmentation: random 1-pixel translation (the crop analogue) and additive pixel noise, clamped to [0, 1].

    ``X: [..., side²]``; ``dx, dy, noise_idx: [...]`` per-sample draws; ``shift, noise``: bool flags broadcastable
    to ``[...]`` (e.g. ``[K, 1]`` per model). Returns ``[..., side²]``.
    """
    batch = X.shape[:-1]
    img = nn.functional.pad(X.reshape(*batch, side, side), (1, 1, 1, 1))
    on = shift.expand(batch).long()
    ar = torch.arange(side, device=X.device)
    r = (ar + 1 + (dy * on)[..., None])[..., :, None].expand(*batch, side, side + 2)
    c = (ar + 1 + (dx * on)[..., None])[..., None, :].expand(*batch, side, side)
    out = img.gather(-2, r).gather(-1, c).reshape(*batch, side * side)
    bank = _noise_bank(side * side, X.device)
    out = out + bank[noise_idx] * noise.expand(batch)[..., None].to(X.dtype)
    return out.clamp(0, 1)


@dataclass
class DigitStream:
    """K models' mini-batch streams padded to ``steps`` steps.

    ``batch(t) -> (x [K, B, 64], target [K, B, ...])``; ``active: [steps, K]`` bool, True while model k still
    trains (its own epochs); ``lengths: [K]`` each model's number of steps.
    """

    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    active: torch.Tensor
    lengths: torch.Tensor

    @property
    def steps(self) -> int:
        return self.active.shape[0]


def digit_stream(X: torch.Tensor, Y: torch.Tensor, subsets: Sequence[torch.Tensor], epochs: Sequence[int],
                 seeds: Sequence[int], batch_size: int, shift: Sequence[bool] | None = None,
                 noise: Sequence[bool] | None = None) -> DigitStream:
    """The streams of K = ``len(subsets)`` models on ``X: [N, 64]`` (images in [0, 1]) with targets ``Y: [N, ...]``:
    model k draws ``batch_schedule(subsets[k], epochs[k], batch_size, seeds[k])`` and is augmented by its flags
    ``shift[k]``, ``noise[k]`` (all False when None)."""
    device = X.device
    K = len(subsets)
    for name, val in (("epochs", epochs), ("seeds", seeds)):
        if len(val) != K:
            raise ValueError(f"{name} has {len(val)} entries but there are {K} models")
    scheds = [batch_schedule(s, e, batch_size, sd) for s, e, sd in zip(subsets, epochs, seeds)]
    lengths = torch.tensor([s.idx.shape[0] for s in scheds])
    T = int(lengths.max()) if K else 0

    def pad(field):
        out = torch.zeros(K, T, batch_size, dtype=torch.long)
        for k, s in enumerate(scheds):
            out[k, :lengths[k]] = getattr(s, field)
        return out.to(device)

    idx, dx, dy, nidx = pad("idx"), pad("dx"), pad("dy"), pad("noise_idx")
    active = (torch.arange(T)[:, None] < lengths[None, :]).to(device)  # [T, K]
    flag = lambda f: torch.as_tensor([bool(v) for v in (f or [False] * K)], device=device)[:, None]  # noqa: E731
    shift_f, noise_f = flag(shift), flag(noise)

    def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = idx[:, t]  # [K, B]
        return augment_images(X[rows], dx[:, t], dy[:, t], nidx[:, t], shift_f, noise_f), Y[rows]

    return DigitStream(batch, active, lengths)
