"""SIREN implicit neural representation of one image (ProbeGen's INR zoo; reference/probegen.md §2, §4.1).

Sitzmann et al. 2020: ``f(c) = W2 · sin(30·(W1 · sin(30·(W0 c + b0)) + b1)) + b2 + 0.5`` maps a pixel coordinate
``c ∈ [-1, 1]²`` to its grey value. Parameter names and shapes match the DWSNets MNIST-INR files:
``seq.0.weight [32, 2]``, ``seq.0.bias [32]``, ``seq.1.weight [32, 32]``, ``seq.1.bias [32]``,
``seq.2.weight [1, 32]``, ``seq.2.bias [1]``; the +0.5 output offset is part of the forward pass, not a weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Siren", "make_siren", "pixel_coordinates"]


class Siren(nn.Module):
    """``coords: [P, 2]`` → grey values ``[P, 1]`` (``w0 = 30``)."""

    def __init__(self, hidden: int = 32, w0: float = 30.0):
        super().__init__()
        self.w0 = w0
        self.seq = nn.Sequential(nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.w0 * self.seq[0](coords))
        h = torch.sin(self.w0 * self.seq[1](h))
        return self.seq[2](h) + 0.5


def make_siren(hidden: int = 32, w0: float = 30.0, generator: torch.Generator | None = None) -> Siren:
    """A SIREN with the paper's init: first layer U(−1/d_in, 1/d_in), later ones U(±√(6/d_in)/w0)."""
    model = Siren(hidden, w0)
    with torch.no_grad():
        for i, layer in enumerate(model.seq):
            d_in = layer.in_features
            bound = 1.0 / d_in if i == 0 else math.sqrt(6.0 / d_in) / w0
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in), generator=generator)
    return model


def pixel_coordinates(height: int = 8, width: int = 8) -> torch.Tensor:
    """``[height·width, 2]`` row-major grid of (row, col) coordinates in [−1, 1]."""
    rows = torch.linspace(-1, 1, height)
    cols = torch.linspace(-1, 1, width)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
