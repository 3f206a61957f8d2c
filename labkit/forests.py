"""Zoo models as MoTHer's forests (lab 01, ``01_model_trees``): stacked layers with their true trees.

``labkit.methods.mother`` is the algorithm (Horwitz et al., ICLR 2025, §4) and takes tensors; this module turns a
``ZooStore`` into those tensors and scores MoTHer on them:

* :func:`merged_state` — the full weights of any zoo model, a peft adapter merged onto its parent with peft's rules
  (``labkit.lora.merge_adapter``: ``W = W_parent + scaling · B A``) in float64, so the rank of a LoRA difference
  is exact;
* :func:`load_forest` — a set of zoo models as a :class:`Forest`: square 2-D weights ``[n, d, d]``, true parents
  and tree ids (the answers MoTHer must recover);
* :func:`regime_forest`, :func:`forest_scores`, :func:`sibling_shortcuts` — cut a zoo into trees of one training
  regime (§4.1: MoTHer assumes one), run MoTHer on them with pooled scores, and diagnose the wrong edges;
* :func:`tree_cases`, :func:`recover_view` — one true tree at a time, for the ``TreeExplorer`` widget.

Every file is read with safetensors (``labkit.tensor_files.read_safetensors``); nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from labkit.lora import merge_adapter
from labkit.methods.mother import kurtosis
from labkit.safe_io import printable
from labkit.zoo.store import ZooStore

__all__ = ["Forest", "TreeCase", "architecture_groups", "forest_scores", "load_forest", "merged_state",
           "recover_view", "regime_forest", "sibling_shortcuts", "square_layers", "tree_cases"]


# ------------------------------------------------------------------------------------------------- weights


def merged_state(store: ZooStore, model_id: str, cache: dict | None = None,
                 verify: bool = False) -> dict[str, torch.Tensor]:
    """Full float64 weights of any model of ``store``; adapters are merged onto their (recursively merged) parent.

    ``verify``: check each file read (the parents' too) against the sha256 the manifest records first
    (``CorruptFileError`` if one differs) — for folders a user points the kit at; the course's own zoos are
    checked when they are built."""
    cache = {} if cache is None else cache
    if model_id in cache:
        return cache[model_id]
    row = store.row(model_id)
    if row["kind"] == "adapter":
        tensors, config = store.load_adapter_weights(model_id, verify=verify)
        state = merge_adapter(merged_state(store, row["parent"], cache, verify), config, tensors,
                              printable(store.path(model_id)))
    else:
        state = {k: v.double() for k, v in store.load_model(model_id, verify=verify)[0].items()}
    cache[model_id] = state
    return state


def square_layers(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the square 2-D weights (the layers MoTHer's official code uses), in the state's order."""
    return [k for k, v in state.items() if v.ndim == 2 and v.shape[0] == v.shape[1]]


# -------------------------------------------------------------------------------------------- zoo forests


@dataclass
class Forest:
    """Models of one architecture with their answers. ``layers: {name: [n, d, d]}`` (float64)."""

    ids: list[str]
    layers: dict[str, torch.Tensor]
    parents: np.ndarray                 # [n] index of the true parent, −1 for a root (or a parent not loaded)
    trees: np.ndarray                   # [n] index into tree_names
    tree_names: list[str]
    kinds: list[str] = field(default_factory=list)  # "pretrain" | "full" | "lora" per model

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def true_edges(self) -> list[tuple[int, int]]:
        return [(int(p), c) for c, p in enumerate(self.parents.tolist()) if p >= 0]

    def subset(self, idx: Sequence[int]) -> Forest:
        """The models ``idx`` (in that order); parents outside the subset become −1."""
        idx = [int(i) for i in idx]
        pos = {old: new for new, old in enumerate(idx)}
        parents = np.array([pos.get(int(self.parents[i]), -1) if self.parents[i] >= 0 else -1 for i in idx])
        sel = torch.as_tensor(idx)
        return Forest([self.ids[i] for i in idx], {k: W[sel] for k, W in self.layers.items()}, parents,
                      self.trees[idx], self.tree_names, [self.kinds[i] for i in idx] if self.kinds else [])

    def shuffled(self, seed: int = 0) -> Forest:
        """The same forest in a random order, so that no method can use "the root comes first"."""
        return self.subset(np.random.default_rng(seed).permutation(len(self)))


def architecture_groups(rows: Sequence[dict]) -> dict[str, list[str]]:
    """``{architecture: [model ids]}`` from manifest rows (MoTHer compares models of one architecture only)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["architecture"], []).append(r["id"])
    return groups


def load_forest(store: ZooStore, ids: Sequence[str], layer_names: Sequence[str] | None = None,
                cache: dict | None = None) -> Forest:
    """Stack the (merged) weights of ``ids`` into a :class:`Forest` with the true parents and trees."""
    from labkit.methods.mother import stack_layers

    ids = list(ids)
    cache = {} if cache is None else cache
    states = [merged_state(store, i, cache) for i in ids]
    layers = stack_layers(states, layer_names)
    rows = [store.row(i) for i in ids]
    pos = {i: n for n, i in enumerate(ids)}
    tree_names = sorted({r["tree"] for r in rows}, key=[r["tree"] for r in rows].index)
    parents = np.array([pos.get(r["parent"], -1) if r["parent"] else -1 for r in rows])
    trees = np.array([tree_names.index(r["tree"]) for r in rows])
    return Forest(ids, layers, parents, trees, tree_names, [r["training"] for r in rows])


def regime_forest(forest: Forest, regime: str) -> Forest:
    """The part of a digit-trees forest whose every edge is of one training regime (MoTHer assumes one).

    ``"ft"``: the roots, their full fine-tunes and the full grandchildren (depth 2). ``"lora"``: the roots and
    their LoRA children (depth 1) — the zoo's LoRA grandchildren hang off *full* children, so a tree of LoRA
    edges only stops at depth 1.
    """
    if regime not in ("ft", "lora"):
        raise ValueError(f"regime must be 'ft' or 'lora', got {regime!r}")
    keep = []
    for n, kind in enumerate(forest.kinds):
        p = int(forest.parents[n])
        if kind == "pretrain" or (regime == "ft" and kind == "full") or \
                (regime == "lora" and kind == "lora" and p >= 0 and forest.kinds[p] == "pretrain"):
            keep.append(n)
    return forest.subset(keep)


def forest_scores(forests: dict[str, Forest], regime: str, lambdas: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0),
                  lam: float = 0.3, reverse: bool = False, ft_variant: str = "normalised", seed: int = 0) -> dict:
    """MoTHer's edge and clustering accuracy (paper §5), pooled over forests: :func:`labkit.methods.mother.mother`
    runs on each forest (one per architecture, models shuffled with ``seed``, as many trees as it has roots).

    Returns ``{"edge_accuracy": at lam, "sweep": {λ: accuracy} (lambdas and lam), "cluster_accuracy": ...,
    "edges": number of true edges, "runs": {name: (shuffled forest, MotherResult at lam)}}``. Pass
    ``lambdas=()`` to skip the sweep (each λ costs one Edmonds run per tree).
    """
    from labkit.methods.mother import clustering_accuracy, edge_accuracy, lambda_sweep, mother

    lam = float(lam)
    others = sorted({float(x) for x in lambdas} - {lam})
    runs, sweep, n_edges, n_models, clustered = {}, dict.fromkeys(sorted([*others, lam]), 0.0), 0, 0, 0.0
    for name, forest in forests.items():
        f = forest.shuffled(seed)
        res = mother(f.layers, len(f.tree_names), regime=regime, lam=lam, reverse=reverse, ft_variant=ft_variant)
        runs[name] = (f, res)
        edges = f.true_edges
        accs = {lam: edge_accuracy(res.edges, edges), **(lambda_sweep(res, edges, others) if others else {})}
        for k, acc in accs.items():
            sweep[k] += acc * len(edges)
        n_edges += len(edges)
        n_models += len(f)
        clustered += clustering_accuracy(res.clusters, f.trees) * len(f)
    sweep = {k: v / n_edges for k, v in sweep.items()}
    return {"edge_accuracy": sweep[lam], "sweep": sweep, "cluster_accuracy": clustered / n_models,
            "edges": n_edges, "runs": runs}


def sibling_shortcuts(forest: Forest, pred_parents: np.ndarray) -> dict[str, float]:
    """Why a distance-based tree goes wrong: for every model given a wrong parent, is that parent a *sibling*
    that moved less from their common parent than the model itself (a "fan" read as a "snake")?

    Also returns the mean cosine between the weight updates of siblings (0 for independent random updates).
    """
    W = torch.cat([v.reshape(len(forest), -1) for v in forest.layers.values()], 1)
    wrong = shortcut = 0
    for c, p in enumerate(forest.parents.tolist()):
        q = int(pred_parents[c])
        if p < 0 or q == p:
            continue
        wrong += 1
        if q >= 0 and forest.parents[q] == p and (W[q] - W[p]).norm() < (W[c] - W[p]).norm():
            shortcut += 1
    cos, count = 0.0, 0
    for p in np.unique(forest.parents[forest.parents >= 0]):
        kids = np.flatnonzero(forest.parents == p)
        if len(kids) < 2:
            continue
        d = W[kids] - W[p]
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        C = d @ d.T
        off = ~torch.eye(len(kids), dtype=torch.bool)
        cos += float(C[off].sum())
        count += int(off.sum())
    return {"wrong": wrong, "sibling_shortcuts": shortcut, "share": shortcut / wrong if wrong else 0.0,
            "sibling_cosine": cos / count if count else float("nan")}


@dataclass
class TreeCase:
    """One true tree, ready for MoTHer's last step: ``D: [n, n]``, ``kurt: [n]``, true ``parents: [n]``."""

    D: torch.Tensor
    kurt: torch.Tensor
    parents: np.ndarray
    kinds: list[str]
    ids: list[str]


def tree_cases(forest: Forest, regime: str = "lora", ft_variant: str = "normalised") -> dict[str, TreeCase]:
    """``{tree name: TreeCase}`` for every true tree of ``forest`` (distance of the regime, κ of its layers)."""
    from labkit.methods.mother import ft_distance, rank_distance

    out = {}
    for t, name in enumerate(forest.tree_names):
        sub = forest.subset(np.flatnonzero(forest.trees == t))
        if len(sub) < 2:
            continue
        D = rank_distance(sub.layers) if regime == "lora" else ft_distance(sub.layers, variant=ft_variant)
        out[name] = TreeCase(D, kurtosis(sub.layers), sub.parents, sub.kinds, sub.ids)
    return out


def recover_view(case: TreeCase, lam: float, reverse: bool = False) -> dict:
    """MoTHer's arborescence on one :class:`TreeCase` at ``lam``: recovered parents, edge accuracy, wrong edges."""
    from labkit.methods.mother import edge_accuracy, edges_from_parents, recover_tree

    parents = recover_tree(case.D, case.kurt, lam, reverse=reverse)
    pred, true = set(edges_from_parents(parents)), set(edges_from_parents(case.parents))
    return {"parents": parents, "edge_accuracy": edge_accuracy(pred, true), "wrong": sorted(pred - true),
            "missed": sorted(true - pred), "lam": float(lam), "reverse": bool(reverse)}
