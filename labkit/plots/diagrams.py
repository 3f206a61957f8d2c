"""Diagrams that teach a method's data flow (one per lab) and the LoRA primer of lab 00.

``flow_diagram`` draws boxes left to right (weights → features → decision), each with a heading and a detail line,
optional labels on the arrows (what flows: tensors and their shapes) and an optional loop-back arrow for iterative
methods. Kinds of box differ by their outline style *and* their colour, never by colour alone.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["flow_diagram", "lora_update_figure"]

# kind → (face colour, edge line style): input data, computation, learned part, output/decision
_BOX_STYLE = {"data": ("#e8f1fb", "-"), "step": ("#f4f4f4", "-"), "learned": ("#fff2d9", "--"),
              "decision": ("#e6f4ea", ":")}


def flow_diagram(stages: list[tuple[str, str] | tuple[str, str, str]], arrows: list[str] | None = None,
                 loop: tuple[int, int, str] | None = None, title: str = "") -> Figure:
    """A left-to-right data-flow diagram of a method.

    ``stages``: ``(heading, detail)`` or ``(heading, detail, kind)`` per box, kind in ``data`` (default for the
    first box), ``step`` (default), ``learned`` (dashed outline) or ``decision`` (default for the last box, dotted
    outline). ``arrows``: ``len(stages) - 1`` labels for the arrows between boxes (``""`` for none).
    ``loop = (to, from, label)``: a curved arrow from box ``from`` back to box ``to`` (an iteration).
    """
    n = len(stages)
    if n < 2:
        raise ValueError(f"flow_diagram needs at least 2 stages, got {n}")
    arrows = list(arrows or [""] * (n - 1))
    if len(arrows) != n - 1:
        raise ValueError(f"flow_diagram: {n} stages need {n - 1} arrow labels, got {len(arrows)}")
    width, gap, height = 2.6, 0.9, 1.5
    fig_w = n * width + (n - 1) * gap + 0.4
    fig, ax = plt.subplots(figsize=(min(fig_w * 0.95, 15), 2.9 if loop else 2.3))
    ax.set_xlim(-0.2, fig_w - 0.2)
    ax.set_ylim(-1.35 if loop else -0.35, height + 0.45)
    ax.axis("off")
    for i, stage in enumerate(stages):
        heading, detail = stage[0], stage[1]
        kind = stage[2] if len(stage) > 2 else ("data" if i == 0 else "decision" if i == n - 1 else "step")
        if kind not in _BOX_STYLE:
            raise ValueError(f"flow_diagram: unknown kind {kind!r} for {heading!r}; use one of {', '.join(_BOX_STYLE)}")
        face, style = _BOX_STYLE[kind]
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0), width, height, boxstyle="round,pad=0.05,rounding_size=0.12",
                                    facecolor=face, edgecolor="black", linestyle=style, linewidth=1.3))
        ax.text(x + width / 2, height * 0.72, heading, ha="center", va="center", fontsize=10, weight="bold",
                wrap=True)
        ax.text(x + width / 2, height * 0.32, detail, ha="center", va="center", fontsize=8, linespacing=1.3)
        if i < n - 1:
            x0, x1 = x + width + 0.05, x + width + gap - 0.05
            ax.add_patch(FancyArrowPatch((x0, height / 2), (x1, height / 2), arrowstyle="-|>", mutation_scale=14,
                                         color="black"))
            if arrows[i]:
                ax.text((x0 + x1) / 2, height / 2 + 0.12, arrows[i], ha="center", va="bottom", fontsize=7)
    if loop is not None:
        to, frm, label = loop
        xa, xb = to * (width + gap) + width / 2, frm * (width + gap) + width / 2
        ax.add_patch(FancyArrowPatch((xb, -0.08), (xa, -0.08), connectionstyle="arc3,rad=-0.25", arrowstyle="-|>",
                                     mutation_scale=14, color="black", linestyle="--"))
        ax.text((xa + xb) / 2, -1.05, label, ha="center", va="center", fontsize=8, style="italic")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def lora_update_figure(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, title: str = "") -> Figure:
    """The LoRA primer in two rows of heat maps: ``B [d_out, r]`` · ``A [r, d_in]`` × (α/r) = ΔW, then
    ``W [d_out, d_in]`` + ΔW = W' (the merged weight). Each panel's title gives its shape, numerical rank and value
    range, so nothing is read from colour alone; the update's rank is at most r."""
    W, A, B = (t.detach().float().cpu() for t in (W, A, B))
    r = A.shape[0]
    if B.shape != (W.shape[0], r) or A.shape != (r, W.shape[1]):
        raise ValueError(f"lora_update_figure: W {list(W.shape)}, B {list(B.shape)}, A {list(A.shape)} do not "
                         f"compose as W + B·A")
    delta = alpha / r * B @ A
    rows = [[("B", B), ("A", A), ("ΔW", delta)], [("W (frozen)", W), ("ΔW", delta), ("W' = W + ΔW", W + delta)]]
    signs = [["·", f"× α/r\n(= {alpha / r:g})  ="], ["+", "="]]
    fig = plt.figure(figsize=(11, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    d_in = W.shape[1]
    axes = [top.subplots(1, 3, gridspec_kw={"width_ratios": [max(r, d_in // 4), d_in, d_in], "wspace": 0.25}),
            bottom.subplots(1, 3, gridspec_kw={"wspace": 0.25})]
    for row, row_signs, row_axes in zip(rows, signs, axes):
        for j, (ax, (name, M)) in enumerate(zip(row_axes, row)):
            lim = M.abs().max().item() or 1.0
            ax.imshow(M.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
            rank = int(torch.linalg.matrix_rank(M))  # numerical rank at float32 precision (torch's default tolerance)
            ax.set_title(f"{name}  {list(M.shape)}\nrank {rank}, values within ±{lim:.2g}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j < 2:
                ax.text(1.08, 0.5, row_signs[j], transform=ax.transAxes, fontsize=15, ha="left", va="center")
    fig.suptitle(title or f"a LoRA update has rank ≤ r = {r}, whatever the layer's size (α = {alpha:g}; red > 0 > "
                          f"blue)", fontsize=10)
    return fig
