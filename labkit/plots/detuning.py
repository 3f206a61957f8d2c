"""Spectral DeTuning (lab 05): sample panels and the W-Error / rank traces."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.plots.images import tile

__all__ = ["detuning_figure", "sample_panels"]

def sample_panels(panels: dict, nrow: int = 4, title: str | None = None) -> Figure:
    """Side-by-side image grids, one per entry of ``panels: {name: images [N, H, W] in [0, 1]}`` (lab 05)."""
    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(2.3 * len(names), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        grid = tile(panels[name], nrow)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def detuning_figure(w_error_trace, rank_trace, it: int, samples: torch.Tensor | None = None,
                    mean_lora_error: float | None = None, title: str = "") -> Figure:
    """W-Error and rank against the iteration, a marker at ``it``, and ``samples: [N, H, W]`` from W* there (lab 05).

    ``w_error_trace: [n_iters]`` (mean over layers of log10 MSE of W* after each iteration), ``rank_trace:
    [n_iters]`` (the rank each iteration used).
    """
    w = torch.as_tensor(w_error_trace, dtype=torch.float64).cpu()
    r = torch.as_tensor(rank_trace).cpu()
    ncols = 2 if samples is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.8 + 2.6 * (ncols - 1), 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": [1.8, 1][:ncols]})
    ax = axes[0, 0]
    x = torch.arange(1, len(w) + 1)
    ax.plot(x.numpy(), w.numpy(), color="C0", label="Spectral DeTuning")
    if mean_lora_error is not None:
        ax.axhline(mean_lora_error, color="C3", ls="--", lw=1, label="Mean-LoRA")
    ax.axhline(-16, color="grey", ls=":", lw=1, label="converged (−16)")
    ax.axvline(it, color="k", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("W-Error (mean log10 MSE)", color="C0")
    ax.legend(fontsize=7, loc="lower left")
    ax2 = ax.twinx()
    ax2.step(x.numpy(), r.numpy(), where="post", color="C1", alpha=0.7)
    ax2.set_ylabel("rank", color="C1")
    i = max(1, min(int(it), len(w))) - 1
    ax.set_title(f"iteration {i + 1}: W-Error {w[i]:.1f}, rank {int(r[i])}", fontsize=9)
    if samples is not None:
        grid = tile(samples, 4)
        axes[0, 1].imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        axes[0, 1].set_title("samples from W*", fontsize=9)
        axes[0, 1].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
