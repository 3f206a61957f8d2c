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

__all__ = ["DSiReExplorer", "DetuningExplorer", "LayerExplorer", "ProbeGenExplorer", "RetrievalExplorer", "TreeExplorer", "detuning_view",
           "dsire_view", "figure_png", "layer_summary", "probegen_view"]


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

    ``cases``: ``{name: labkit.forests.TreeCase}`` (from ``labkit.forests.tree_cases``); ``lambdas``: the λ values
    of the slider; ``reverse``: the kurtosis orientation (see ``labkit.methods.mother.direction_matrix``). The
    callback calls ``labkit.forests.recover_view`` and ``labkit.plots.tree_comparison_figure``.
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
        from labkit.forests import recover_view
        from labkit.plots import tree_comparison_figure

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


def dsire_view(features: dict, sizes, sets, model: int, n_train_sets: int, seed: int = 42) -> dict:
    """What the DSiRe explorer shows (lab 04): model ``model``'s votes and prediction when DSiRe is fitted on the
    models of ``n_train_sets`` personalisation sets — the first seed-``seed`` split (``dsire.split_sets``) that
    holds the model's own set out. ``features: {voter: [N, d]}``, ``sizes, sets: [N]``.

    Returns ``{"model", "truth", "prediction", "votes": {voter: size}, "train_sets", "n_train_sets"}``.
    """
    from labkit.methods import dsire

    sizes = torch.as_tensor(sizes).long()
    names = sorted(set(sets))
    if not 0 <= model < len(sizes):
        raise ValueError(f"model index {model} out of range: there are {len(sizes)} models")
    own = names.index(sets[model])
    split = next((s for s in dsire.split_sets(len(names), n_train_sets, 100, seed) if own not in s), None)
    if split is None:
        raise ValueError(f"no split of {n_train_sets} training sets leaves set {sets[model]!r} out")
    train_names = {names[i] for i in split}
    tr = torch.tensor([i for i in range(len(sizes)) if sets[i] in train_names])
    pred, votes = dsire.predict({k: v[tr] for k, v in features.items()}, sizes[tr],
                                {k: v[model:model + 1] for k, v in features.items()})
    return {"model": model, "truth": int(sizes[model]), "prediction": int(pred[0]),
            "votes": {k: int(v) for k, v in zip(features, votes[0])}, "train_sets": sorted(train_names),
            "n_train_sets": n_train_sets}


class DSiReExplorer(_Explorer):
    """Pick a test LoRA and a number of training personalisation sets; see every voter's vote, the majority and the
    truth, next to DSiRe's accuracy against the number of training sets (lab 04, the paper's Fig. 5).

    ``features: {voter: [N, r]}`` from ``dsire.dsire_features``; ``sizes, sets: [N]``; ``labels``: a name per model
    for the dropdown; ``curve``: ``{"n_train_sets", "accuracy_mean", "accuracy_std"}`` (lists), computed once by the
    notebook with ``dsire.evaluate``. The callback calls ``dsire_view`` and ``labkit.plots.dsire_votes_figure``.
    """

    def __init__(self, features: dict, sizes, sets, labels, curve: dict, n_train_sets: int | None = None,
                 model: int = 0, seed: int = 42):
        import ipywidgets as widgets

        if not features or len(labels) != len(sizes) or len(sets) != len(sizes):
            raise ValueError("DSiReExplorer needs features and one size, set and label per model")
        self.features, self.sizes, self.sets, self.curve, self.seed = features, sizes, list(sets), curve, seed
        self.classes = sorted({int(s) for s in sizes})
        options = list(curve["n_train_sets"])
        self.model = widgets.Dropdown(options=[(str(lab), i) for i, lab in enumerate(labels)], value=model,
                                      description="test LoRA")
        self.n_train = widgets.SelectionSlider(options=options, value=n_train_sets or options[len(options) // 3],
                                               description="train sets", continuous_update=False)
        self._wire(self.model, self.n_train)

    def update(self) -> dict:
        """Recompute for the current controls; returns (and keeps) the new state."""
        from labkit.plots import dsire_votes_figure

        view = dsire_view(self.features, self.sizes, self.sets, self.model.value, self.n_train.value, self.seed)
        k = list(self.curve["n_train_sets"]).index(view["n_train_sets"])
        view["accuracy"] = float(self.curve["accuracy_mean"][k])
        self.state = view
        agree = sum(v == view["truth"] for v in view["votes"].values())
        self._show(f"{self.model.label}: truth n = {view['truth']}, DSiRe says {view['prediction']} "
                   f"({agree}/{len(view['votes'])} voters right); trained on {view['n_train_sets']} sets, "
                   f"mean accuracy {view['accuracy']:.1f} %",
                   dsire_votes_figure(view["votes"], view["truth"], view["prediction"], self.classes, self.curve,
                                      view["n_train_sets"]))
        return self.state


def probegen_view(runs: dict, depth: int, n_probes: int) -> dict:
    """What the ProbeGen explorer shows (lab 03): one cached run, picked by generator depth and number of probes.

    ``runs``: ``{(gen_depth, n_probes): {"accuracy": float, "probes": [T, 2] or [T, C, H, W]}}`` (depth 0 = vanilla
    probing). Returns ``{"depth", "n_probes", "accuracy", "probes", "vanilla_accuracy"}`` (the depth-0 run with the
    same number of probes, or None).
    """
    key = (int(depth), int(n_probes))
    if key not in runs:
        have = ", ".join(f"depth {d}/{t} probes" for d, t in sorted(runs))
        raise ValueError(f"no cached run with generator depth {key[0]} and {key[1]} probes; cached: {have}")
    vanilla = runs.get((0, key[1]))
    return {"depth": key[0], "n_probes": key[1], "accuracy": float(runs[key]["accuracy"]), "probes": runs[key]["probes"],
            "vanilla_accuracy": None if vanilla is None else float(vanilla["accuracy"])}


class ProbeGenExplorer(_Explorer):
    """Pick the generator depth and the number of probes of a cached run; see its accuracy and its probes (lab 03).

    ``runs`` as in ``probegen_view``; combinations that were not run say so instead of failing.
    """

    def __init__(self, runs: dict, depth: int | None = None, n_probes: int | None = None):
        import ipywidgets as widgets

        if not runs:
            raise ValueError("ProbeGenExplorer needs at least one cached run {(depth, n_probes): {...}}")
        self.runs = runs
        depths = sorted({d for d, _ in runs})
        counts = sorted({t for _, t in runs})
        self.depth = widgets.Dropdown(options=[(f"{d} (vanilla)" if d == 0 else str(d), d) for d in depths],
                                      value=depths[-1] if depth is None else depth, description="depth")
        self.n_probes = widgets.Dropdown(options=counts, value=counts[-1] if n_probes is None else n_probes,
                                         description="probes")
        self._wire(self.depth, self.n_probes)

    def update(self) -> dict:
        """Recompute for the current controls; returns (and keeps) the new state."""
        from labkit.plots import probe_figure

        key = (self.depth.value, self.n_probes.value)
        if key not in self.runs:
            self.state = {"depth": key[0], "n_probes": key[1], "accuracy": None}
            self.label.value = f"depth {key[0]} with {key[1]} probes was not run in this notebook"
            return self.state
        view = probegen_view(self.runs, *key)
        self.state = view
        name = "vanilla probes" if key[0] == 0 else f"deep linear generator, depth {key[0]}"
        text = f"{name}, {key[1]} probes: test accuracy {view['accuracy']:.1%}"
        if view["vanilla_accuracy"] is not None and key[0] != 0:
            text += f" (vanilla {view['vanilla_accuracy']:.1%})"
        self._show(text, probe_figure({f"depth {key[0]}, T = {key[1]}": view["probes"]}))
        return self.state


class RetrievalExplorer(_Explorer):
    """Type a text query, see the top-k models it retrieves — sample grids and cosine scores (lab 02, ProbeX).

    ``search(query, k) -> {"ids", "descriptions", "scores", "samples" [k, n, H, W]}`` is a plain function (the
    notebook builds it from a trained ``ProbeXZeroShot``); the callback calls it and
    ``labkit.plots.retrieval_figure``. A nonzero ``calibration`` γ is passed on as ``search(query, k,
    calibration=γ)`` (calibrated stacking: the search lowers the scores of seen-concept models by γ).
    """

    def __init__(self, search, query: str = "a mirrored handwritten three", k: int = 4, max_k: int = 8,
                 calibration: float = 0.0):
        import ipywidgets as widgets

        if not 1 <= k <= max_k:
            raise ValueError(f"k must be between 1 and max_k={max_k}, got {k}")
        self.search, self.calibration = search, float(calibration)
        self.query = widgets.Text(value=query, description="query", continuous_update=False)
        self.k = widgets.IntSlider(value=k, min=1, max=max_k, description="top k", continuous_update=False)
        self._wire(self.query, self.k)

    def update(self) -> dict:
        """Run the search for the current query and k; returns (and keeps) the result."""
        from labkit.plots import retrieval_figure

        query = self.query.value.strip()
        if not query:
            self.state = {"query": "", "ids": [], "descriptions": [], "scores": []}
            self.label.value = "type a description, e.g. “a thick handwritten seven”"
            return self.state
        res = (self.search(query, self.k.value, calibration=self.calibration) if self.calibration
               else self.search(query, self.k.value))
        self.state = {"query": query, **res}
        best = ", ".join(f"{d} ({float(s):.2f})" for d, s in zip(res["descriptions"][:3], res["scores"][:3]))
        self._show(f"“{query}” → {best}", retrieval_figure(query, res["descriptions"], res["scores"], res["samples"]))
        return self.state
