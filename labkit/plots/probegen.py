"""ProbeGen (lab 03): the probes, as points in the image square or as images."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.plots.images import tile

__all__ = ["probe_figure"]

def probe_figure(panels: dict, title: str | None = None, max_images: int = 32) -> Figure:
    """Probes side by side, one panel per ``name → probes``: INR coordinates ``[T, 2]`` as points in the
    ``[−1, 1]²`` image square (row, col), CNN probes ``[T, 1, H, W]`` as a grid of their first ``max_images``
    (grey scale symmetric around 0, to the 98th percentile of the panel's absolute values)."""
    panels = {k: v.detach().float().cpu() for k, v in panels.items()}
    images = [v.dim() == 4 for v in panels.values()]
    per_row = 8
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, (name, P), is_image in zip(axes[0], panels.items(), images):
        if is_image:
            P = P[:max_images, 0]
            grid = tile(P, per_row, fill=float("nan"), border=0)
            lim = float(torch.quantile(P.abs().flatten(), 0.98)) or 1.0  # robust to a few extreme pixels
            ax.imshow(grid.numpy(), cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.axis("off")
            name = f"{name}\n(grey = 0, white ≥ +{lim:.2g})"
        else:
            ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", color="grey"))
            ax.scatter(P[:, 1].numpy(), P[:, 0].numpy(), s=9)
            lim = max(1.1, float(P.abs().max()) * 1.05)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(lim, -lim)
            ax.set_aspect("equal")
            ax.set_xlabel("column")
            ax.set_ylabel("row")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
