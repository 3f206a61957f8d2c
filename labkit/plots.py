"""Matplotlib figures shared by the labs. Each function returns a ``Figure`` and never calls ``show``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.spectra import energy_fraction, singular_values

__all__ = ["detuning_figure", "dsire_phenomenon_figure", "dsire_votes_figure", "forest_figure", "image_grid",
           "layer_figure", "probe_figure", "retrieval_figure", "sample_panels", "tile",
           "tree_comparison_figure", "tree_layout"]


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


# ---------------------------------------------------------------------------------------- model trees (lab 01)

_KIND_MARKER = {"pretrain": "s", "full": "o", "lora": "^"}


def tree_layout(parents) -> dict[int, tuple[float, float]]:
    """A tidy layered layout of a forest given ``parents: [n]`` (−1 for roots): leaves at consecutive x,
    a parent centred over its children, ``y = −depth``. Trees are placed left to right, one unit apart."""
    import numpy as np

    parents = [int(p) for p in np.asarray(parents).tolist()]
    n = len(parents)
    children: dict[int, list[int]] = {i: [] for i in range(n)}
    roots = []
    for c, p in enumerate(parents):
        (children[p].append(c) if 0 <= p < n and p != c else roots.append(c))
    pos: dict[int, tuple[float, float]] = {}
    next_x = [0.0]

    def place(v: int, depth: int, seen: set) -> float:
        seen.add(v)
        kids = [c for c in children[v] if c not in seen]
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(c, depth + 1, seen) for c in kids]
            x = (min(xs) + max(xs)) / 2
        pos[v] = (x, -float(depth))
        return x

    seen: set = set()
    for r in roots:
        place(r, 0, seen)
        next_x[0] += 1.0
    for v in range(n):  # nodes on a cycle (only possible for a broken parents array) go at the end
        if v not in pos:
            place(v, 0, seen)
    return pos


def _depths(parents) -> list[int]:
    import numpy as np

    parents = np.asarray(parents).tolist()
    out = []
    for v in range(len(parents)):
        d, u = 0, v
        while parents[u] >= 0 and d <= len(parents):
            u, d = parents[u], d + 1
        out.append(d)
    return out


def _node_colours(trees, depths) -> list:
    """Colour by tree (tab10), lighter with depth."""
    import numpy as np
    from matplotlib import colormaps

    base = colormaps["tab10"]
    out = []
    for t, d in zip(trees, depths):
        rgb = np.array(base(int(t) % 10)[:3])
        out.append(tuple(rgb + (1 - rgb) * min(d, 3) * 0.25))
    return out


def _draw(ax, parents, pos, colours, kinds, edge_colours=None, edge_styles=None, labels=None, size=60):
    import networkx as nx

    G = nx.DiGraph()
    G.add_nodes_from(range(len(parents)))
    edges = [(int(p), c) for c, p in enumerate(parents) if p >= 0]
    G.add_edges_from(edges)
    edge_colours = edge_colours or ["0.45"] * len(edges)
    edge_styles = edge_styles or ["solid"] * len(edges)
    for style in set(edge_styles):
        sel = [k for k, s in enumerate(edge_styles) if s == style]
        nx.draw_networkx_edges(G, pos, edgelist=[edges[k] for k in sel], edge_color=[edge_colours[k] for k in sel],
                               style=style, ax=ax, arrows=True, arrowsize=7, width=1.0, node_size=size)
    for kind, marker in _KIND_MARKER.items():
        nodes = [i for i, k in enumerate(kinds) if k == kind]
        if nodes:
            nx.draw_networkx_nodes(G, pos, nodelist=nodes, node_color=[colours[i] for i in nodes],
                                   node_shape=marker, node_size=size * (2 if kind == "pretrain" else 1),
                                   edgecolors="0.2", linewidths=0.5, ax=ax)
    if labels:
        nx.draw_networkx_labels(G, {k: (x, y - 0.18) for k, (x, y) in pos.items()}, labels=labels, font_size=6,
                                ax=ax)
    ax.set_axis_off()


def forest_figure(parents, trees, kinds, tree_names=None, title: str | None = None) -> Figure:
    """The Model Graph of a zoo: ``parents: [n]`` (−1 for roots), ``trees: [n]`` tree ids, ``kinds[i]`` in
    ``"pretrain" | "full" | "lora"``. Nodes are coloured by tree (lighter with depth); squares are roots,
    circles full fine-tunes, triangles LoRA fine-tunes; LoRA edges are dashed. Small forests share one panel;
    larger ones get a panel per tree, two per row."""
    import math

    import numpy as np
    from matplotlib.lines import Line2D

    parents, trees, kinds = np.asarray(parents), np.asarray(trees), list(kinds)
    if not (len(parents) == len(trees) == len(kinds)):
        raise ValueError(f"parents, trees and kinds need one entry per model, got {len(parents)}, {len(trees)}, "
                         f"{len(kinds)}")
    ids = sorted(set(trees.tolist()))
    names = tree_names or [f"tree {t}" for t in ids]
    colours = _node_colours(trees, _depths(parents))
    panels = [np.arange(len(parents))] if len(parents) <= 80 else [np.flatnonzero(trees == t) for t in ids]
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    width = max(6.0, min(16.0, 0.12 * len(panels[0]) + 4)) if ncols == 1 else 14.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.4 * nrows), squeeze=False)
    for ax, members in zip(axes.flat, panels):
        pos_of = {int(m): k for k, m in enumerate(members)}
        local = np.array([pos_of.get(int(parents[m]), -1) for m in members])
        sub_kinds = [kinds[m] for m in members]
        styles = ["dashed" if sub_kinds[c] == "lora" else "solid" for c, p in enumerate(local) if p >= 0]
        _draw(ax, local, tree_layout(local), [colours[m] for m in members], sub_kinds, edge_styles=styles,
              size=max(14, 60 - len(members) // 2))
        if len(panels) > 1:
            ax.set_title(f"{names[ids.index(int(trees[members[0]]))]} ({len(members)} models)", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles = [Line2D([], [], marker=m, ls="", color="0.5", label=k) for k, m in
               (("root (pre-trained)", "s"), ("full fine-tune", "o"), ("LoRA fine-tune (dashed edge)", "^"))]
    legend_colours = _node_colours(range(len(names)), [0] * len(names))
    handles += [Line2D([], [], marker="o", ls="", color=legend_colours[t], label=n) for t, n in enumerate(names)]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title or f"{len(parents)} models in {len(names)} trees (lighter = deeper)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def tree_comparison_figure(true_parents, pred_parents, kinds=None, labels=None, title: str = "") -> Figure:
    """The true tree (left; edges MoTHer missed in red) next to the recovered one (right; wrong edges in red).

    ``true_parents, pred_parents: [n]`` (−1 for a root); ``kinds``: ``"pretrain" | "full" | "lora"`` per node.
    """
    import numpy as np

    true_parents, pred_parents = np.asarray(true_parents), np.asarray(pred_parents)
    n = len(true_parents)
    if len(pred_parents) != n:
        raise ValueError(f"true_parents and pred_parents must have the same length, got {n} and {len(pred_parents)}")
    kinds = list(kinds) if kinds is not None else ["pretrain" if p < 0 else "full" for p in true_parents]
    true_edges = {(int(p), c) for c, p in enumerate(true_parents) if p >= 0}
    pred_edges = {(int(p), c) for c, p in enumerate(pred_parents) if p >= 0}
    colours = _node_colours([0] * n, _depths(true_parents))
    width = max(7.0, min(18.0, 0.25 * n + 4))
    fig, axes = plt.subplots(1, 2, figsize=(width, 3.4))
    size = max(20, 80 - n)
    for ax, parents, good, name in ((axes[0], true_parents, pred_edges, "true tree (red: missed)"),
                                    (axes[1], pred_parents, true_edges, "recovered (red: wrong)")):
        edges = [(int(p), c) for c, p in enumerate(parents) if p >= 0]
        ec = ["0.45" if e in good else "tab:red" for e in edges]
        _draw(ax, parents, tree_layout(parents), colours, kinds, edge_colours=ec,
              edge_styles=["dashed" if kinds[c] == "lora" else "solid" for _, c in edges], labels=labels,
              size=size)
        ax.set_title(name, fontsize=9)
    acc = len(true_edges & pred_edges) / max(1, len(true_edges))
    fig.suptitle(f"{title}  edge accuracy {acc:.0%} ({len(true_edges & pred_edges)}/{len(true_edges)})".strip(),
                 fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- Spectral DeTuning (lab 05)


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


# ------------------------------------------------------------------------------------------------ DSiRe (lab 04)


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


# -------------------------------------------------------------------------------------------- ProbeGen (lab 03)


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


# ------------------------------------------------------------------------------------------------ ProbeX (lab 02)


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
