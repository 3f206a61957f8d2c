"""A plain MLP classifier with named layers (``fc1``, ``fc2``, …) so peft can target them by name."""

from __future__ import annotations

import itertools
from collections import OrderedDict

from torch import nn

__all__ = ["make_mlp"]


def make_mlp(n_in: int = 64, hidden: tuple[int, ...] = (128,), n_out: int = 10) -> nn.Sequential:
    """``Linear → ReLU → … → Linear``; layer ``i`` is called ``fc{i}`` (weights ``fc{i}.weight: [d_out, d_in]``)."""
    sizes = [n_in, *hidden, n_out]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (a, b) in enumerate(itertools.pairwise(sizes), 1):
        layers[f"fc{i}"] = nn.Linear(a, b)
        if i < len(sizes) - 1:
            layers[f"act{i}"] = nn.ReLU()
    return nn.Sequential(layers)
