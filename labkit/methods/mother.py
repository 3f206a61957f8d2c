"""MoTHer: recover Model Trees from weights alone (Horwitz, Shul & Hoshen, "Unsupervised Model Tree Heritage
Recovery", ICLR 2025; arXiv 2405.18432). Taught in notebook ``01_model_trees``.

The pipeline (paper §4; spec ``reference/model_trees.md`` §B.2):

1. **cluster** the models into trees: Ward linkage on a pairwise distance, cut into ``n_trees`` clusters;
2. inside each tree, a pairwise **distance** ``D`` places the edges — the rank of the weight difference for
   LoRA trees (a LoRA child differs from its parent by a rank-r matrix, so rank counts graph hops), the
   min–max normalised maximum difference for full fine-tunes — and the weight **kurtosis** ``κ`` gives the
   direction: fine-tuning lowers kurtosis, so an edge whose child is *more* kurtotic than its parent is
   penalised, ``K[i, j] = 1 if κ(j) > κ(i)`` (reversed for continued pre-training);
3. the tree is the **minimum directed spanning tree** (Chu-Liu/Edmonds arborescence) of

       M = D + λ · mean(D) · K,        λ = 0.3.

Models arrive stacked: ``layers: {name: Tensor[n_models, d_out, d_in]}`` (or a list of such tensors); model
``i`` is index ``i`` of every tensor. Pairwise quantities are computed on batches of pairwise differences
``[pairs, d_out, d_in]``, chunked to bound memory, never in a Python loop over pairs. Small results (distance
matrices, kurtosis) come back on the CPU as float64.

Reproduced from the official code on purpose (odd but harmless, see the spec):

* the full fine-tuning distance is the *signed* maximum of ``W_i − W_j``, computed once per unordered pair in
  index order (``i < j``) and copied to both directions, after a per-layer min–max normalisation by the
  smallest and largest entry over all pairwise differences of the tree; ``D`` is then the max over layers.
  The paper's plain ``max |W_u − W_v|`` is ``ft_distance(..., variant="max_abs")``;
* ``mean(D)`` is the mean over *all* ``n²`` entries of the tree's ``D``, the zero diagonal included;
* Ward linkage is run on the rank / mean-absolute distances although they are not Euclidean;
* the root is whichever node the arborescence leaves without a parent.

Not reproduced (defects of the official scripts): reloading models once per pair, computing the FT
distances twice per tree, and taking the Stable Diffusion min/max from raw weights instead of differences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform

from labkit.methods.checks import as_float, require_finite

__all__ = [
    "LAMBDA",
    "MotherResult",
    "cluster_trees",
    "clustering_accuracy",
    "direction_matrix",
    "edge_accuracy",
    "edge_weights",
    "edges_from_parents",
    "ft_distance",
    "kurtosis",
    "lambda_sweep",
    "mean_abs_distance",
    "minimum_directed_spanning_tree",
    "mother",
    "rank_distance",
    "recover_tree",
    "stack_layers",
]

LAMBDA = 0.3
"""The direction weight λ used in every official script."""

_MAX_ELEMENTS = 1 << 24  # entries of one chunk of pairwise differences (64 MiB in float32)

Layers = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
Edge = tuple[int, int]


# ---------------------------------------------------------------------------------------------------------------
# input


def stack_layers(models: Sequence[Mapping[str, torch.Tensor]], names: Iterable[str] | None = None, *,
                 contains: str | None = None, square_only: bool = True) -> dict[str, torch.Tensor]:
    """Stack per-model state dicts into ``{name: Tensor[n_models, d_out, d_in]}``.

    ``names`` picks the parameters; by default every 2-D parameter that all models share (in the first
    model's order), keeping only square ones when ``square_only`` (as the official code does) and only names
    containing ``contains`` (e.g. ``"value"`` for the LoRA distance, ``"output.dense"`` for FT kurtosis).
    """
    if isinstance(models, Mapping) or len(models) < 2:
        n = 1 if isinstance(models, Mapping) else len(models)
        raise ValueError(f"MoTHer needs at least 2 models (a list of state dicts), got {n}")
    if names is None:
        shared = [k for k in models[0] if all(k in m for m in models[1:])]
        names = [k for k in shared if getattr(models[0][k], "ndim", 0) == 2
                 and (not square_only or models[0][k].shape[0] == models[0][k].shape[1])]
    names = [k for k in names if contains is None or contains in k]
    if not names:
        raise ValueError("no parameter matches: expected 2-D (square) weights shared by every model"
                         + (f" whose name contains {contains!r}" if contains else ""))
    out = {}
    for k in names:
        for i, m in enumerate(models):
            if k not in m:
                raise ValueError(f"model {i} has no parameter {k!r}")
        ref = tuple(models[0][k].shape)
        if len(ref) != 2:
            raise ValueError(f"expected 2-D weights, got shape {list(ref)} for {k!r}")
        for m in models[1:]:
            if tuple(m[k].shape) != ref:
                raise ValueError(f"expected 2-D weights of one shape, got {list(ref)} and {list(m[k].shape)} "
                                 f"for {k!r}")
        out[k] = torch.stack([torch.as_tensor(m[k]) for m in models])
    return out


def _as_dict(layers: Layers) -> dict[str, torch.Tensor]:
    if isinstance(layers, torch.Tensor):
        raise TypeError("expected a dict or list of stacked layers [n_models, d_out, d_in], got one tensor; "
                        "wrap it: {'weight': W}")
    if isinstance(layers, Mapping):
        return dict(layers)
    return {str(i): w for i, w in enumerate(layers)}


def _check_layers(layers: Layers) -> tuple[dict[str, torch.Tensor], int]:
    """Validate stacked layers; return them as a dict of float tensors and the number of models."""
    layers = _as_dict(layers)
    if not layers:
        raise ValueError("no layers given: expected {name: Tensor[n_models, d_out, d_in]}")
    n, out = None, {}
    for name, W in layers.items():
        if not isinstance(W, torch.Tensor):
            raise TypeError(f"layer {name!r}: expected a torch.Tensor, got {type(W).__name__}")
        if W.ndim != 3:
            raise ValueError(f"layer {name!r}: expected [n_models, d_out, d_in], got shape {list(W.shape)}; "
                             "stack per-model weights with stack_layers")
        if n is None:
            n = W.shape[0]
        elif W.shape[0] != n:
            raise ValueError(f"layer {name!r} holds {W.shape[0]} models but an earlier layer holds {n}")
        W = as_float(W)
        require_finite(W, f"layer {name!r} contains NaN or inf; check the weights you loaded")
        out[name] = W
    if n < 2:
        raise ValueError(f"MoTHer needs at least 2 models, got {n}")
    return out, n


def _check_square(D: torch.Tensor, what: str = "D") -> torch.Tensor:
    D = torch.as_tensor(D)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"{what} must be a square [n, n] matrix, got shape {list(D.shape)}")
    D = D.detach().to("cpu", torch.float64)
    off = ~torch.eye(D.shape[0], dtype=torch.bool)
    require_finite(D[off], f"{what} contains NaN or inf off the diagonal")
    return D


def _check_lambda(lam: float) -> float:
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"λ (lam) must be a finite number ≥ 0, got {lam!r}")
    return float(lam)


# ---------------------------------------------------------------------------------------------------------------
# distances (paper §4.1; spec §B.2 (a), (b))


def _pair_reduce(W: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor],
                 max_elements: int) -> torch.Tensor:
    """``reduce(W[i] − W[j])`` for every pair ``i < j`` (``torch.triu_indices`` order), batched in chunks.

    ``W: [n, d_out, d_in]``, ``reduce: [c, d_out, d_in] → [c] or [c, k]`` → ``[n_pairs] or [n_pairs, k]``.
    """
    n = W.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=W.device)
    chunk = max(1, int(max_elements) // max(1, W[0].numel()))
    parts = [reduce(W[i[s:s + chunk]] - W[j[s:s + chunk]]) for s in range(0, i.numel(), chunk)]
    return torch.cat(parts).cpu()


def _square_from_pairs(values: torch.Tensor, n: int) -> torch.Tensor:
    """Symmetric ``[n, n]`` float64 matrix with zero diagonal from ``[n_pairs]`` values in triu order."""
    D = torch.zeros(n, n, dtype=torch.float64)
    i, j = torch.triu_indices(n, n, 1)
    D[i, j] = values.to(torch.float64)
    D[j, i] = values.to(torch.float64)
    return D


def rank_distance(layers: Layers, *, rtol: float | None = None, atol: float | None = None,
                  max_elements: int = _MAX_ELEMENTS) -> torch.Tensor:
    """ℓ_LoRA (paper §4.1): ``D[u, v] = Σ_layers rank(W_u − W_v)``. ``layers: {name: [n, d_out, d_in]}`` → ``[n, n]``.

    The rank uses ``torch.linalg.matrix_rank``'s default tolerance (``σ_max · max(d_out, d_in) · eps`` of the
    weights' dtype), the same as the official ``numpy.linalg.matrix_rank``; pass ``rtol``/``atol`` to change it.
    A child one LoRA of rank r away from its parent is at distance r per adapted layer.
    """
    layers, n = _check_layers(layers)
    D = torch.zeros(n, n, dtype=torch.float64)
    for W in layers.values():
        ranks = _pair_reduce(W, lambda d: torch.linalg.matrix_rank(d, atol=atol, rtol=rtol), max_elements)
        D += _square_from_pairs(ranks, n)
    return D


def mean_abs_distance(layers: Layers, *, max_elements: int = _MAX_ELEMENTS) -> torch.Tensor:
    """Clustering distance for full fine-tunes (spec §B.2 (a)): ``D[u, v] = Σ_layers mean |W_u − W_v|``.

    ``layers: {name: [n, d_out, d_in]}`` → ``[n, n]``.
    """
    layers, n = _check_layers(layers)
    D = torch.zeros(n, n, dtype=torch.float64)
    for W in layers.values():
        D += _square_from_pairs(_pair_reduce(W, lambda d: d.abs().mean(dim=(1, 2)), max_elements), n)
    return D


def ft_distance(layers: Layers, *, variant: str = "normalised",
                max_elements: int = _MAX_ELEMENTS) -> torch.Tensor:
    """ℓ_FT (paper §4.1): the distance between full fine-tunes. ``layers: {name: [n, d_out, d_in]}`` → ``[n, n]``.

    ``variant="normalised"`` (default, the official code): for each layer ``L`` and pair ``i < j``,
    ``d_L(i, j) = (max(W_i − W_j) − m_L) / (M_L − m_L)``, where ``m_L``/``M_L`` are the smallest/largest entry
    over all pairwise differences ``W_i − W_j (i < j)`` of the given models (so pass one tree's models);
    ``D[i, j] = D[j, i] = max_L d_L(i, j)``. ``variant="max_abs"`` (the paper's wording):
    ``D[u, v] = max_L max |W_u − W_v|``.
    """
    if variant not in ("normalised", "max_abs"):
        raise ValueError(f"variant must be 'normalised' or 'max_abs', got {variant!r}")
    layers, n = _check_layers(layers)
    D = torch.zeros(n, n, dtype=torch.float64)
    for W in layers.values():
        if variant == "max_abs":
            d = _pair_reduce(W, lambda x: x.abs().amax(dim=(1, 2)), max_elements).to(torch.float64)
        else:
            ext = _pair_reduce(W, lambda x: torch.stack([x.amax(dim=(1, 2)), x.amin(dim=(1, 2))], 1),
                               max_elements).to(torch.float64)
            lo, hi = ext[:, 1].min(), ext[:, 0].max()
            span = hi - lo
            d = (ext[:, 0] - lo) / span if span > 0 else torch.zeros_like(ext[:, 0])
        D = torch.maximum(D, _square_from_pairs(d, n))
    return D


# ---------------------------------------------------------------------------------------------------------------
# direction (paper §4.2; spec §B.2 (b), (c))


def kurtosis(layers: Layers) -> torch.Tensor:
    """κ(u) = Σ_layers excess kurtosis of the flattened weights. ``layers: {name: [n, d_out, d_in]}`` → ``[n]``.

    Fisher's definition with the biased moments, as ``scipy.stats.kurtosis(W.flatten())`` (``fisher=True,
    bias=True``): ``m4 / m2² − 3`` with ``m_k = mean((w − mean w)^k)``; computed in float64 where the device has it.
    """
    layers, n = _check_layers(layers)
    total = torch.zeros(n, dtype=torch.float64)
    for W in layers.values():
        x = W.reshape(n, -1)
        x = x.double() if x.device.type != "mps" else x.float()
        x = x - x.mean(dim=1, keepdim=True)
        m2 = (x * x).mean(dim=1)
        m4 = (x * x * x * x).mean(dim=1)
        total += (m4 / m2.clamp_min(torch.finfo(x.dtype).tiny) ** 2 - 3.0).cpu().to(torch.float64)
    return total


def direction_matrix(kurt: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
    """K[i, j] = 1 when the edge i → j goes the "wrong" way: ``κ(j) > κ(i)`` (``reverse``: ``κ(j) < κ(i)``).

    ``kurt: [n]`` → ``[n, n]`` of 0/1 (float64). Fine-tuning lowers kurtosis, so by default a child should be
    less kurtotic than its parent; ``reverse=True`` is for continued pre-training (the spec's Stable Diffusion case).
    """
    kurt = torch.as_tensor(kurt).detach().to("cpu", torch.float64)
    if kurt.ndim != 1:
        raise ValueError(f"kurt must be a vector [n], got shape {list(kurt.shape)}")
    require_finite(kurt, "kurt contains NaN or inf; check the weights you loaded")
    parent, child = kurt[:, None], kurt[None, :]
    return (child < parent if reverse else child > parent).to(torch.float64)


def edge_weights(D: torch.Tensor, K: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """M = D + λ · mean(D) · K, with +∞ on the diagonal. ``D, K: [n, n]`` → ``[n, n]``.

    ``mean(D)`` is over all n² entries, zero diagonal included (as the official code). λ = 0 is distance only.
    """
    lam = _check_lambda(lam)
    D, K = _check_square(D), _check_square(K, "K")
    if D.shape != K.shape:
        raise ValueError(f"D and K must have the same shape, got {list(D.shape)} and {list(K.shape)}")
    M = D + lam * D.mean() * K
    M.fill_diagonal_(float("inf"))
    return M


# ---------------------------------------------------------------------------------------------------------------
# minimum directed spanning tree (paper §4.3; spec §B.2 (c))


def minimum_directed_spanning_tree(M: torch.Tensor) -> np.ndarray:
    """The minimum-weight spanning arborescence of the complete digraph with edge i → j weighing ``M[i, j]``.

    Chu-Liu/Edmonds via ``networkx.minimum_spanning_arborescence``; the diagonal is ignored.
    ``M: [n, n]`` → ``parents: [n]`` (int), the parent of each node, −1 for the root.
    """
    M = _check_square(M, "M")
    n = M.shape[0]
    parents = np.full(n, -1, dtype=np.int64)
    if n == 1:
        return parents
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    Mn = M.numpy()
    G.add_weighted_edges_from((i, j, float(Mn[i, j])) for i in range(n) for j in range(n) if i != j)
    T = nx.algorithms.tree.branchings.minimum_spanning_arborescence(G, attr="weight")
    for u, v in T.edges():
        parents[v] = u
    return parents


def edges_from_parents(parents: Sequence[int] | np.ndarray) -> list[Edge]:
    """``parents: [n]`` (−1 for roots) → the edges ``(parent, child)``, ordered by child."""
    return [(int(p), c) for c, p in enumerate(np.asarray(parents).tolist()) if p >= 0]


def recover_tree(D: torch.Tensor, kurt: torch.Tensor, lam: float = LAMBDA, *,
                 reverse: bool = False) -> np.ndarray:
    """MoTHer on one tree: ``D: [n, n]``, ``kurt: [n]`` → ``parents: [n]`` (−1 for the root)."""
    return minimum_directed_spanning_tree(edge_weights(D, direction_matrix(kurt, reverse=reverse), lam))


# ---------------------------------------------------------------------------------------------------------------
# clustering into trees (paper §4.4; spec §B.2 (a))


def cluster_trees(D: torch.Tensor, n_trees: int) -> np.ndarray:
    """Ward linkage on ``D: [n, n]`` cut into at most ``n_trees`` clusters → labels ``[n]`` in 0..n_trees−1.

    ``scipy.cluster.hierarchy.linkage(squareform(D), "ward")`` then ``fcluster(..., "maxclust")``; labels are
    renumbered by first appearance, so model 0 is in tree 0.
    """
    D = _check_square(D)
    n = D.shape[0]
    if int(n_trees) != n_trees or not 1 <= n_trees <= n:
        raise ValueError(f"n_trees must be an integer between 1 and the number of models ({n}), got {n_trees!r}")
    if n_trees == 1:
        return np.zeros(n, dtype=np.int64)
    D = (D + D.T) / 2
    D.fill_diagonal_(0.0)
    raw = fcluster(linkage(squareform(D.numpy(), checks=False), method="ward"), int(n_trees),
                   criterion="maxclust")
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # cluster id ranked by its first member
    return order[inverse].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# metrics (spec §B.4)


def clustering_accuracy(pred: Sequence[int] | np.ndarray, true: Sequence[int] | np.ndarray) -> float:
    """Share of models whose tree is right after the best matching of predicted to true tree ids (in [0, 1]).

    The matching maximises agreement (``scipy.optimize.linear_sum_assignment`` on the confusion matrix).
    """
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"pred and true need the same non-zero length, got {pred.size} and {true.size}")
    p_ids, p = np.unique(pred, return_inverse=True)
    t_ids, t = np.unique(true, return_inverse=True)
    confusion = np.zeros((p_ids.size, t_ids.size), dtype=np.int64)
    np.add.at(confusion, (p, t), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, cols].sum() / pred.size)


def edge_accuracy(pred_edges: Iterable[Edge], true_edges: Iterable[Edge]) -> float:
    """|predicted ∩ true directed edges| / |true edges| (in [0, 1]); edges are ``(parent, child)``."""
    true = {(int(u), int(v)) for u, v in true_edges}
    if not true:
        raise ValueError("true_edges is empty: edge accuracy needs at least one ground-truth edge")
    pred = {(int(u), int(v)) for u, v in pred_edges}
    return len(pred & true) / len(true)


# ---------------------------------------------------------------------------------------------------------------
# the whole pipeline


@dataclass
class MotherResult:
    """What :func:`mother` found. Indices are model indices (positions in the stacked layers)."""

    clusters: np.ndarray            # [n] tree id of each model
    parents: np.ndarray             # [n] parent index, −1 for each tree's root
    edges: list[Edge]               # (parent, child), ordered by child
    kurtosis: torch.Tensor          # [n] κ of each model
    cluster_distance: torch.Tensor  # [n, n] the distance Ward clustered on
    members: list[np.ndarray]       # per tree: its model indices, ascending
    tree_distances: list[torch.Tensor]  # per tree: D [n_t, n_t], rows in the order of members[t]
    regime: str = "lora"
    lam: float = LAMBDA
    reverse: bool = False

    @property
    def roots(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.parents < 0)]


def _assemble(members: list[np.ndarray], tree_distances: list[torch.Tensor], kurt: torch.Tensor, lam: float,
              reverse: bool, n: int) -> np.ndarray:
    parents = np.full(n, -1, dtype=np.int64)
    for idx, D in zip(members, tree_distances):
        local = recover_tree(D, kurt[torch.as_tensor(idx)], lam, reverse=reverse)
        parents[idx] = np.where(local >= 0, idx[np.maximum(local, 0)], -1)
    return parents


def mother(layers: Layers, n_trees: int = 1, *, regime: str = "lora", lam: float = LAMBDA,
           reverse: bool = False, ft_variant: str = "normalised", kurtosis_layers: Layers | None = None,
           cluster_layers: Layers | None = None, rtol: float | None = None,
           max_elements: int = _MAX_ELEMENTS) -> MotherResult:
    """Recover the Model Graph of a set of models (paper §4; spec §B.2).

    ``layers: {name: [n, d_out, d_in]}`` give the tree distance (official: the ``value`` projections for LoRA,
    the q/k/v/output projections for FT); ``kurtosis_layers`` give κ (official: the same layers for LoRA, the
    ``output.dense`` projections for FT; default ``layers``); ``cluster_layers`` give the clustering distance
    (official: every square 2-D weight; default ``layers``). ``regime``: ``"lora"`` (rank distance for both
    steps) or ``"ft"`` (mean |difference| to cluster, :func:`ft_distance` inside each tree).
    """
    if regime not in ("lora", "ft"):
        raise ValueError(f"regime must be 'lora' or 'ft', got {regime!r}")
    if ft_variant not in ("normalised", "max_abs"):
        raise ValueError(f"ft_variant must be 'normalised' or 'max_abs', got {ft_variant!r}")
    lam = _check_lambda(lam)
    layers, n = _check_layers(layers)
    for other, what in ((kurtosis_layers, "kurtosis_layers"), (cluster_layers, "cluster_layers")):
        if other is not None and (m := _check_layers(other)[1]) != n:
            raise ValueError(f"{what} holds {m} models but layers holds {n}")
    if int(n_trees) != n_trees or not 1 <= n_trees <= n:
        raise ValueError(f"n_trees must be an integer between 1 and the number of models ({n}), got {n_trees!r}")

    tree_D_full = None
    if regime == "lora":
        tree_D_full = rank_distance(layers, rtol=rtol, max_elements=max_elements)
        Dc = tree_D_full if cluster_layers is None else rank_distance(cluster_layers, rtol=rtol,
                                                                      max_elements=max_elements)
    else:
        Dc = mean_abs_distance(layers if cluster_layers is None else cluster_layers, max_elements=max_elements)
    clusters = cluster_trees(Dc, n_trees)
    kurt = kurtosis(layers if kurtosis_layers is None else kurtosis_layers)

    members = [np.flatnonzero(clusters == t) for t in range(int(clusters.max()) + 1)]
    tree_distances = []
    for idx in members:
        if tree_D_full is not None:
            tree_distances.append(tree_D_full[idx][:, idx])
        elif idx.size < 2:
            tree_distances.append(torch.zeros(idx.size, idx.size, dtype=torch.float64))
        else:
            sel = torch.as_tensor(idx)
            sub = {k: W[sel.to(W.device)] for k, W in layers.items()}
            tree_distances.append(ft_distance(sub, variant=ft_variant, max_elements=max_elements))
    parents = _assemble(members, tree_distances, kurt, lam, reverse, n)
    return MotherResult(clusters=clusters, parents=parents, edges=edges_from_parents(parents), kurtosis=kurt,
                        cluster_distance=Dc, members=members, tree_distances=tree_distances, regime=regime,
                        lam=lam, reverse=reverse)


def lambda_sweep(result: MotherResult, true_edges: Iterable[Edge],
                 lambdas: Iterable[float] = (0.0, 0.1, 0.3, 1.0, 3.0)) -> dict[float, float]:
    """Edge accuracy of the same forest (same clusters and distances) for each λ: ``{λ: accuracy}``.

    λ = 0 is the distance-only ablation; the spec's default is λ = 0.3.
    """
    true_edges = list(true_edges)
    n = result.parents.shape[0]
    out = {}
    for lam in lambdas:
        lam = _check_lambda(lam)
        parents = _assemble(result.members, result.tree_distances, result.kurtosis, lam, result.reverse, n)
        out[lam] = edge_accuracy(edges_from_parents(parents), true_edges)
    return out
