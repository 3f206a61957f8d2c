"""ProbeX (lab 02): the models a text query retrieves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.plots.images import tile

__all__ = ["retrieval_figure"]


def retrieval_figure(query: str, descriptions, scores, samples: torch.Tensor, nrow: int = 4) -> Figure:
    """The top-k models a text query retrieves: one sample grid per model, titled with its description and cosine
    score (lab 02). ``samples: [k, n, H, W]`` in [0, 1]; ``descriptions``, ``scores``: k each."""
    k = len(descriptions)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.7), squeeze=False)
    for ax, desc, score, imgs in zip(axes[0], descriptions, scores, samples):
        grid = tile(imgs, nrow)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{desc}\ncos {float(score):.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"query: “{query}”", fontsize=10)
    fig.tight_layout()
    return fig
