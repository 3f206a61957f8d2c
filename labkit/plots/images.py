"""Weight matrices and image grids: the figures every lab shares."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.spectra import energy_fraction, singular_values

__all__ = ["image_grid", "layer_figure", "tile"]

def layer_figure(W: torch.Tensor, W_init: torch.Tensor | None = None, name: str = "layer", k: int = 5) -> Figure:
    """A weight matrix ``W: [d_out, d_in]`` as a heat map, and its singular values (with the init's, if given)."""
    W = W.detach().float().cpu()
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1.1, 1]})
    lim = W.abs().max().item() or 1.0
    im = ax_w.imshow(W.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax_w.set_title(f"{name}: W  {list(W.shape)}")
    ax_w.set_xlabel("input unit")
    ax_w.set_ylabel("output unit")
    fig.colorbar(im, ax=ax_w, fraction=0.046)
    s = singular_values(W)
    ax_s.plot(range(1, len(s) + 1), s.numpy(), "o-", ms=3, label=f"trained  (top-{k} energy {energy_fraction(W, k):.2f})")
    if W_init is not None:
        W_init = W_init.detach().float().cpu()
        s0 = singular_values(W_init)
        ax_s.plot(range(1, len(s0) + 1), s0.numpy(), "o-", ms=3, alpha=0.6,
                  label=f"at init  (top-{k} energy {energy_fraction(W_init, k):.2f})")
    ax_s.set_yscale("log")
    ax_s.set_xlabel("index i")
    ax_s.set_ylabel("singular value σᵢ")
    ax_s.set_title("spectrum")
    ax_s.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tile(images: torch.Tensor, ncol: int, fill: float = 0.0, border: int = 1) -> torch.Tensor:
    """``images: [N, H, W]`` laid out in a ``[rows·(H+1)−1+2·border, ncol·(W+1)−1+2·border]`` mosaic, row-major,
    one ``fill`` pixel between images and ``border`` around them."""
    images = images.detach().float().cpu()
    n, h, w = images.shape
    ncol = max(1, min(ncol, n))
    rows = (n + ncol - 1) // ncol
    grid = torch.full((rows * (h + 1) - 1 + 2 * border, ncol * (w + 1) - 1 + 2 * border), fill)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = border + r * (h + 1), border + c * (w + 1)
        grid[top:top + h, left:left + w] = images[i]
    return grid


def image_grid(images: torch.Tensor, nrow: int = 8, title: str | None = None, labels=None) -> Figure:
    """Show ``images: [N, H, W]`` in a grid (values are min–max scaled per figure)."""
    images = images.detach().float().cpu()
    n = len(images)
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(ncol * 0.9, nrows * 0.9 + (0.3 if title else 0)), squeeze=False)
    lo, hi = images.min().item(), images.max().item()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].numpy(), cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
