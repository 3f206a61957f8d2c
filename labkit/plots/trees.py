"""Model trees (lab 01): a forest's layout, the Model Graph, and true-vs-recovered trees."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["forest_figure", "tree_comparison_figure", "tree_layout"]

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
