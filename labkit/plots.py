"""Matplotlib figures shared by the labs. Each function returns a ``Figure`` and never calls ``show``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from labkit.spectra import energy_fraction, singular_values

__all__ = ["forest_figure", "image_grid", "layer_figure", "tree_comparison_figure", "tree_layout"]


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
        imgs = panels[name].detach().float().cpu()
        n, h, w = imgs.shape
        ncol = min(nrow, n)
        rows = (n + ncol - 1) // ncol
        grid = torch.zeros(rows * (h + 1) + 1, ncol * (w + 1) + 1)
        for i in range(n):
            r, c = divmod(i, ncol)
            grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = imgs[i]
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
        imgs = samples.detach().float().cpu()
        n, h, wd = imgs.shape
        ncol = min(4, n)
        rows = (n + ncol - 1) // ncol
        grid = torch.zeros(rows * (h + 1) + 1, ncol * (wd + 1) + 1)
        for k in range(n):
            rr, cc = divmod(k, ncol)
            grid[1 + rr * (h + 1):1 + rr * (h + 1) + h, 1 + cc * (wd + 1):1 + cc * (wd + 1) + wd] = imgs[k]
        axes[0, 1].imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        axes[0, 1].set_title("samples from W*", fontsize=9)
        axes[0, 1].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
