"""ipywidgets explorers. Each returns an object holding the widget (``.widget``) and the plain state its
callbacks compute (``.state``), so tests drive it by setting control values — no browser needed.
Notebooks ``display(explorer.widget)`` and also show the default view as a static figure for readers
without a kernel (DESIGN §6).
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import torch

from labkit.plots import layer_figure
from labkit.spectra import energy_fraction

__all__ = ["DetuningExplorer", "LayerExplorer", "TreeExplorer", "detuning_view", "figure_png", "layer_summary"]


def figure_png(fig, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes and close it. Widgets show figures through an ``Image`` widget rather than an
    ``Output`` widget: under papermill/nbclient, Output widgets that clear and redisplay occasionally leave the
    client waiting forever for a message (nbclient issue 312), and an Image is also lighter to update."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def layer_summary(W: torch.Tensor, W_init: torch.Tensor | None = None, k: int = 5) -> dict[str, float]:
    """Numbers the layer explorer shows: shape, top-k energy share now and at init, relative change."""
    out = {"d_out": W.shape[0], "d_in": W.shape[1], "energy_topk": float(energy_fraction(W.float(), k))}
    if W_init is not None:
        out["energy_topk_init"] = float(energy_fraction(W_init.float(), k))
        out["relative_change"] = float((W - W_init).norm() / W_init.norm())
    return out


class _Explorer:
    """What every explorer shares: controls in a row, a label and an image below; any control change calls
    ``update``, which sets ``self.state`` and shows its text and figure through ``_show``."""

    def _wire(self, *controls) -> None:
        import ipywidgets as widgets

        self.label = widgets.Label()
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([widgets.HBox(list(controls)), self.label, self.image])
        self.state: dict = {}
        for control in controls:
            control.observe(lambda _: self.update(), names="value")
        self.update()

    def _show(self, text: str, fig) -> None:
        self.label.value = text
        self.image.value = figure_png(fig)

    def update(self) -> dict:
        raise NotImplementedError


class LayerExplorer(_Explorer):
    """A slider over a model's weight matrices: heat map + singular-value spectrum, trained vs init.

    ``layers``: name → ``W: [d_out, d_in]``; ``init`` (optional): the same names → weights at initialisation.
    """

    def __init__(self, layers: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None = None, k: int = 5):
        import ipywidgets as widgets

        if not layers:
            raise ValueError("LayerExplorer needs at least one weight matrix")
        bad = [n for n, W in layers.items() if W.ndim != 2]
        if bad:
            raise ValueError(f"LayerExplorer shows 2-D weight matrices; {bad} are not 2-D")
        self.names, self.layers, self.init, self.k = list(layers), layers, init or {}, k
        self.slider = widgets.IntSlider(value=0, min=0, max=len(self.names) - 1, description="layer",
                                        continuous_update=False)
        self.k_slider = widgets.IntSlider(value=k, min=1, max=min(min(W.shape) for W in layers.values()),
                                          description="top k", continuous_update=False)
        self._wire(self.slider, self.k_slider)

    def update(self) -> dict:
        """Recompute for the current slider values; returns (and keeps) the new state."""
        name = self.names[self.slider.value]
        W, W0, k = self.layers[name], self.init.get(name), self.k_slider.value
        self.state = {"layer": name, "k": k, **layer_summary(W, W0, k)}
        text = f"{name}: {self.state['d_out']}×{self.state['d_in']}, top-{k} energy {self.state['energy_topk']:.2f}"
        if W0 is not None:
            text += f" (at init {self.state['energy_topk_init']:.2f}; ‖W−W₀‖/‖W₀‖ = {self.state['relative_change']:.2f})"
        self._show(text, layer_figure(W, W0, name, k))
        return self.state


class TreeExplorer(_Explorer):
    """Pick a tree and λ; see MoTHer's recovered tree next to the true one, wrong edges in red (lab 01).

    ``cases``: ``{name: labkit.trees.TreeCase}`` (from ``labkit.trees.tree_cases``); ``lambdas``: the λ values of the
    slider; ``reverse``: the kurtosis orientation (see ``labkit.methods.mother.direction_matrix``). The callback
    calls ``labkit.trees.recover_view`` and ``labkit.plots.tree_comparison_figure``.
    """

    def __init__(self, cases: dict, lambdas=(0.0, 0.1, 0.3, 1.0, 3.0), lam: float = 0.3, reverse: bool = False,
                 tree: str | None = None):
        import ipywidgets as widgets

        if not cases:
            raise ValueError("TreeExplorer needs at least one tree (a dict name -> TreeCase)")
        lambdas = sorted({float(x) for x in lambdas} | {float(lam)})
        self.cases, self.reverse = cases, reverse
        self.tree = widgets.Dropdown(options=list(cases), value=tree or next(iter(cases)), description="tree")
        self.lam = widgets.SelectionSlider(options=lambdas, value=float(lam), description="λ",
                                           continuous_update=False)
        self._wire(self.tree, self.lam)

    def update(self) -> dict:
        """Recompute for the current controls; returns (and keeps) the new state."""
        from labkit.plots import tree_comparison_figure
        from labkit.trees import recover_view

        name, case = self.tree.value, self.cases[self.tree.value]
        view = recover_view(case, self.lam.value, self.reverse)
        self.state = {"tree": name, **view}
        self._show(f"{name}: λ = {view['lam']:g}, edge accuracy {view['edge_accuracy']:.0%}, "
                   f"{len(view['wrong'])} wrong edge(s)",
                   tree_comparison_figure(case.parents, view["parents"], case.kinds,
                                          title=f"{name}, λ = {view['lam']:g}"))
        return self.state


def detuning_view(w_error_trace, rank_trace, samples: dict, it: int) -> dict:
    """What the DeTuning explorer shows at iteration ``it`` (lab 05): the nearest kept snapshot at or before ``it``.

    ``w_error_trace, rank_trace: [n_iters]``; ``samples: {iteration: images [N, H, W]}`` for the kept iterations
    (0 = the start, W* = Mean-LoRA). Returns ``{"iteration", "w_error", "rank", "samples"}``; at iteration 0
    ``w_error`` is None unless the trace starts there.
    """
    if not samples:
        raise ValueError("detuning_view needs samples for at least one kept iteration")
    kept = sorted(int(k) for k in samples)
    it = max(kept[0], min(int(it), len(w_error_trace)))
    at = max(k for k in kept if k <= it)
    w = float(w_error_trace[at - 1]) if at >= 1 else None
    rank = int(rank_trace[at - 1]) if at >= 1 else int(rank_trace[0])
    return {"iteration": at, "w_error": w, "rank": rank, "samples": samples[at]}


class DetuningExplorer(_Explorer):
    """An iteration slider over a Spectral DeTuning run: W-Error, the current rank and samples from W* (lab 05).

    ``w_error_trace, rank_trace: [n_iters]``; ``samples: {iteration: images [N, H, W] in [0, 1]}`` drawn from the
    weights W* after that many iterations (same noise for every iteration). The callback calls
    ``detuning_view`` and ``labkit.plots.detuning_figure``.
    """

    def __init__(self, w_error_trace, rank_trace, samples: dict, mean_lora_error: float | None = None,
                 it: int | None = None):
        import ipywidgets as widgets

        if not samples:
            raise ValueError("DetuningExplorer needs samples for at least one kept iteration")
        self.w_error_trace, self.rank_trace, self.samples = w_error_trace, rank_trace, samples
        self.mean_lora_error = mean_lora_error
        kept = sorted(int(k) for k in samples)
        self.slider = widgets.SelectionSlider(options=kept, value=kept[-1] if it is None else max(
            k for k in kept if k <= max(kept[0], it)), description="iteration", continuous_update=False)
        self._wire(self.slider)

    def update(self) -> dict:
        """Recompute for the current slider value; returns (and keeps) the new state."""
        from labkit.plots import detuning_figure

        view = detuning_view(self.w_error_trace, self.rank_trace, self.samples, self.slider.value)
        self.state = view
        w = "Mean-LoRA start" if view["w_error"] is None else f"W-Error {view['w_error']:.2f}"
        self._show(f"iteration {view['iteration']}: {w}, rank {view['rank']}",
                   detuning_figure(self.w_error_trace, self.rank_trace, max(1, view["iteration"]), view["samples"],
                                   self.mean_lora_error))
        return self.state
