"""DSiRe (lab 04): the dataset-size signal and one model's votes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

__all__ = ["dsire_phenomenon_figure", "dsire_votes_figure"]

def dsire_phenomenon_figure(norms: torch.Tensor, spectra: torch.Tensor, sizes, layers, spectrum_layer: str,
                            title: str = "") -> Figure:
    """The dataset-size signal (lab 04): left, the mean ‖B·A‖_F of every layer against the dataset size n;
    right, the mean σ(B·A) of ``spectrum_layer`` for each n. ``norms: [N, L]``, ``spectra: [N, r]``, ``sizes: [N]``."""
    sizes = torch.as_tensor(sizes)
    ns = sizes.unique().tolist()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for j, name in enumerate(layers):
        means = [norms[sizes == n, j].double().mean().item() for n in ns]
        axes[0].plot(ns, means, "o-", ms=3, lw=1, label=name)
    axes[0].set_xlabel("dataset size n (images)")
    axes[0].set_ylabel("mean ‖B·A‖_F")
    axes[0].set_title("Frobenius norm per layer", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    cmap = plt.get_cmap("viridis")
    for k, n in enumerate(ns):
        s = spectra[sizes == n].double().mean(0)
        axes[1].plot(range(1, len(s) + 1), s.numpy(), "o-", ms=3, color=cmap(k / max(1, len(ns) - 1)), label=f"n={n}")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("index i")
    axes[1].set_ylabel("mean σ_i(B·A)")
    axes[1].set_title(f"singular values of B·A, layer {spectrum_layer}", fontsize=9)
    axes[1].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def dsire_votes_figure(votes: dict, truth: int, prediction: int, classes, curve: dict | None = None,
                       n_train_sets: int | None = None, title: str = "") -> Figure:
    """One model's DSiRe votes (lab 04): a grid of voters (rows A / B / B·A, columns layers) coloured by the size
    each voted for, next to the truth and the majority; optionally the accuracy against the number of training
    sets (``curve: {"n_train_sets": [K], "accuracy_mean": [K], "accuracy_std": [K]}``, the paper's Fig. 5)."""
    import numpy as np

    classes = sorted(int(c) for c in classes)
    layers = [k for k in votes if not k.endswith((".down", ".up"))]
    grid = np.array([[classes.index(int(votes[f"{layer}{suffix}"])) for layer in layers]
                     for suffix in (".down", ".up", "")], dtype=float)
    ncols = 2 if curve is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.0 + 3.6 * (ncols - 1), 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": [1.5, 1][:ncols]})
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=len(classes) - 1, aspect="auto")
    for (i, j), c in np.ndenumerate(grid):
        n = classes[int(c)]
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="red" if n != truth else "white")
    ax.set_yticks(range(3), ["σ(A)", "σ(B)", "σ(B·A)"])
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    cbar = fig.colorbar(im, ax=ax, ticks=range(len(classes)))
    cbar.ax.set_yticklabels([str(c) for c in classes], fontsize=7)
    ok = "✓" if prediction == truth else "✗"
    ax.set_title(f"votes (red: wrong) → majority {prediction}, truth {truth} {ok}", fontsize=9)
    if curve is not None:
        ax = axes[0, 1]
        x = np.asarray(curve["n_train_sets"])
        m, s = np.asarray(curve["accuracy_mean"]), np.asarray(curve["accuracy_std"])
        ax.plot(x, m, "o-", ms=3)
        ax.fill_between(x, m - s, m + s, alpha=0.25)
        ax.axhline(100 / len(classes), color="grey", ls=":", lw=1, label="chance")
        if n_train_sets is not None:
            ax.axvline(n_train_sets, color="k", lw=1)
        ax.set_xlabel("training personalisation sets")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy vs training sets (Fig. 5)", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
