"""DSiRe: recover the size of a LoRA's fine-tuning set from the singular values of its weights (lab 04).

Salama, Kahana, Horwitz & Hoshen, *Dataset Size Recovery from LoRA Weights*, arXiv 2406.19395 (v1), §4 and
Appendix 12.1. Taught in ``notebooks/04_dsire.ipynb``; spec: ``reference/dsire.md``.

Dataset-size recovery is classification over a few sizes (1–6, 1–50, …). For every adapted layer ``l`` with
``A_l: [r, d_in]`` and ``B_l: [d_out, r]`` DSiRe takes three spectra, each its own *voter*::

    f_A = σ(A_l),   f_B = σ(B_l),   f_BA = σ(B_l A_l)       (r values each, descending)

fits one 1-nearest-neighbour classifier (squared L2) per voter on the training models, and predicts a model's
size as the **majority vote** of its 3·L voters. Voter order is the official one: every layer's ``.down`` (A)
and ``.up`` (B) voter in layer order, then every layer's BA voter; a tie goes to the label that appears first
in that order (``collections.Counter.most_common``). The alpha/r scale of BA and the official code's global
min–max scaling are positive affine maps of every coordinate and cannot change any 1-NN result; both are
therefore optional here (``scale``) or skipped (min–max).

Speed and exactness (DESIGN §10). ``σ(BA)`` is computed without forming the ``d_out × d_in`` product: with
``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (reduced QR), ``BA = Q_B (R_B R_Aᵀ) Q_Aᵀ`` and the orthonormal factors do not
change singular values, so ``σ(BA) = σ(R_B R_Aᵀ)``, an ``r × r`` problem. All models and all layers of one shape
go through one batched QR and one batched ``svdvals``. ``tests/test_dsire.py`` proves equality with the direct
SVD; ``benchmarks/bench_dsire.py`` times it against the official per-matrix ``torch.svd_lowrank`` route.
The official code's defects (spec §3: no CPU path for BA, an out×1×in "product", an invalid faiss call, no
reshape of flat cells) are not reproduced: here BA is the plain 2-D ``B @ A`` and the 1-NN is an exact
``torch.cdist`` + ``argmin`` (first index on exact distance ties, like a flat faiss index).

Entry points (also for the ``labkit dsire`` command)::

    voters = dsire_features(A, B, scale=1.0)
        # A: {layer: [N, r, d_in]}, B: {layer: [N, d_out, r]} -> {voter name: [N, r]} in the official order
    result = cross_validate(voters, sizes, sets, n_train_sets=15, repeats=10, seed=42, vote="majority",
                            set_order=None)
        # sizes: [N] ints, sets: [N] personalisation-set names -> dict(accuracy_mean, accuracy_std, mae_mean,
        #   mae_std, mape_mean, mape_std, accuracy, mae, mape (per split), splits)
    voters = official_order({**dsire_features(A1, B1), **dsire_features(A2, B2)})  # layer by layer, merged

Layer names are free; for LoRA-WiSE pass the official simplified module keys (``….attn1.to_k``, with
``to_out.0`` → ``to_out``) so that the voters are named ``<module>.down``, ``<module>.up`` and ``<module>``.

Baselines and ablations of the paper (Tables 2, 5, 9): ``frobenius_features`` (one scalar ‖ΔW_l‖_F per layer,
each a voter: Frobenius-NN), ``concat_features`` (one voter on all layers concatenated: "NN – full model"),
``select_voters`` (A / B / BA only) and ``vote="average"`` (the mean of the voters' labels, snapped to the
nearest size class).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from labkit.methods.checks import as_float, require_choice, require_finite

__all__ = [
    "METRICS",
    "concat_features",
    "cross_validate",
    "dsire_features",
    "frobenius_features",
    "lora_spectra",
    "majority_vote",
    "nearest_neighbour_votes",
    "official_order",
    "predict",
    "product_singular_values",
    "scores",
    "select_voters",
    "split_sets",
]

METRICS = ("accuracy", "mae", "mape")


# ------------------------------------------------------------------------------------------------ features


def _pad(s: torch.Tensor, r: int) -> torch.Tensor:
    return s if s.shape[-1] == r else torch.cat([s, s.new_zeros(*s.shape[:-1], r - s.shape[-1])], -1)


def lora_spectra(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(σ(A), σ(B), σ(BA))``, each ``[..., r]`` descending, from one reduced QR of each factor (§4).

    ``A: [..., r, d_in]``, ``B: [..., d_out, r]``. With ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``: ``σ(B) = σ(R_B)``,
    ``σ(A) = σ(R_A)`` and ``σ(BA) = σ(R_B R_Aᵀ)`` — three ``r × r`` problems, exact; when ``d_out`` or ``d_in`` is
    below ``r`` the missing values are zeros.
    """
    if A.ndim < 2 or B.ndim < 2 or A.shape[-2] != B.shape[-1] or A.shape[:-2] != B.shape[:-2]:
        raise ValueError(f"expected A [..., r, d_in] and B [..., d_out, r] with the same r and batch shape, "
                         f"got A {list(A.shape)} and B {list(B.shape)}")
    A, B = as_float(A), as_float(B)
    r = A.shape[-2]
    R_B = torch.linalg.qr(B, mode="r").R  # [..., min(d_out, r), r]
    R_A = torch.linalg.qr(A.transpose(-1, -2), mode="r").R  # [..., min(d_in, r), r]
    return (_pad(torch.linalg.svdvals(R_A), r), _pad(torch.linalg.svdvals(R_B), r),
            _pad(torch.linalg.svdvals(R_B @ R_A.transpose(-1, -2)), r))


def product_singular_values(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The ``r`` singular values of ``B @ A`` without forming it: ``A: [..., r, d_in]``, ``B: [..., d_out, r]`` →
    ``[..., r]`` (see ``lora_spectra``)."""
    return lora_spectra(A, B)[2]


def _check_factors(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor]) -> int:
    """Validate ``{layer: A [N, r, d_in]}`` and ``{layer: B [N, d_out, r]}``; return N."""
    if not A or list(A) != list(B):
        raise ValueError(f"A and B must name the same layers in the same order, got {list(A)[:3]} and {list(B)[:3]}")
    n = None
    for layer in A:
        a, b = A[layer], B[layer]
        if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
            raise ValueError(f"layer {layer!r}: expected A [N, r, d_in] and B [N, d_out, r], "
                             f"got A {list(a.shape)} and B {list(b.shape)}")
        if n is not None and a.shape[0] != n:
            raise ValueError(f"layer {layer!r} has {a.shape[0]} models, the first layer has {n}")
        n = a.shape[0]
        for factor in (a, b):
            require_finite(factor, f"layer {layer!r} holds NaN or infinite LoRA weights")
    return n


def _by_shape(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for layer in A:
        groups.setdefault((tuple(A[layer].shape), tuple(B[layer].shape)), []).append(layer)
    return groups


def dsire_features(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scale: float = 1.0
                   ) -> dict[str, torch.Tensor]:
    """DSiRe's voters: ``{"<layer>.down": σ(A), "<layer>.up": σ(B)}`` for every layer, then ``{"<layer>": σ(scale·BA)}``.

    ``A: {layer: [N, r, d_in]}``, ``B: {layer: [N, d_out, r]}`` (the LoRA ``down`` / ``up`` matrices of N models)
    → ``{voter: [N, r]}``. Layers of the same shapes are computed in one batched call. ``scale`` (alpha/r) only
    multiplies σ(BA); it never changes a 1-NN result within one recipe (the official code leaves it out).
    """
    _check_factors(A, B)
    sA, sB, sBA = {}, {}, {}
    for layers in _by_shape(A, B).values():
        a = torch.stack([as_float(A[name]) for name in layers])  # [L, N, r, d_in]
        b = torch.stack([as_float(B[name]) for name in layers])  # [L, N, d_out, r]
        for name, x, y, z in zip(layers, *lora_spectra(a, b)):
            sA[name], sB[name], sBA[name] = x, y, abs(scale) * z
    voters = {}
    for name in A:
        voters[f"{name}.down"], voters[f"{name}.up"] = sA[name], sB[name]
        voters[name] = sBA[name]
    return official_order(voters)


def official_order(voters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official voter order: every ``.down`` / ``.up`` voter as given, then every BA voter as given. Use it to
    merge ``dsire_features`` computed layer by layer (e.g. streaming a large parquet): ``official_order({**f1, **f2})``."""
    ab = {k: v for k, v in voters.items() if k.endswith((".down", ".up"))}
    return {**ab, **{k: v for k, v in voters.items() if k not in ab}}


def frobenius_features(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scale: float = 1.0
                       ) -> dict[str, torch.Tensor]:
    """Frobenius-NN (Table 2): one voter per layer holding ``‖scale·B A‖_F`` as a ``[N, 1]`` feature.

    Computed as the norm of σ(BA), so the product is never formed.
    """
    _check_factors(A, B)
    out = {}
    for layers in _by_shape(A, B).values():
        s = product_singular_values(torch.stack([A[n] for n in layers]), torch.stack([B[n] for n in layers]))
        for name, x in zip(layers, s):
            out[name] = abs(scale) * x.norm(dim=-1, keepdim=True)
    return {name: out[name] for name in A}


def select_voters(voters: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Only the ``"A"`` (``.down``), ``"B"`` (``.up``) or ``"BA"`` voters of ``dsire_features`` (Table 9)."""
    keep = {"A": lambda k: k.endswith(".down"), "B": lambda k: k.endswith(".up"),
            "BA": lambda k: not k.endswith((".down", ".up"))}
    require_choice(kind, list(keep), "kind")
    return {k: v for k, v in voters.items() if keep[kind](k)}


def concat_features(voters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One voter on every feature concatenated ("NN – full model", Table 5): ``{"all": [N, Σ d_v]}``."""
    return {"all": torch.cat([v.reshape(len(v), -1) for v in voters.values()], dim=1)}


# ------------------------------------------------------------------------------------------------ classifier


def nearest_neighbour_votes(train: dict[str, torch.Tensor], train_labels: torch.Tensor,
                            test: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each voter's 1-NN label (exact squared L2): ``train {v: [N_train, d_v]}``, ``test {v: [N_test, d_v]}``,
    ``train_labels [N_train]`` → ``[N_test, V]`` in voter order. Voters of the same width share one batched
    ``cdist``; on an exact distance tie the earlier training model wins."""
    names = list(train)
    if not names or names != list(test):
        raise ValueError("train and test must hold the same voters in the same order")
    n_test = next(iter(test.values())).shape[0]
    votes = torch.empty(n_test, len(names), dtype=train_labels.dtype)
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(train[name].shape[-1], []).append(i)
    for idx in groups.values():
        tr = torch.stack([train[names[i]] for i in idx]).double()  # [V, N_train, d]
        te = torch.stack([test[names[i]] for i in idx]).double()  # [V, N_test, d]
        d = torch.cdist(te, tr, compute_mode="donot_use_mm_for_euclid_dist")  # exact pairwise distances
        votes[:, idx] = train_labels[d.argmin(-1)].T
    return votes


def majority_vote(votes: torch.Tensor) -> torch.Tensor:
    """The most common label in each row of ``votes: [N, V]``; a tie goes to the label seen first in the row
    (the voter order), as ``Counter(row).most_common(1)`` does. → ``[N]``."""
    if votes.ndim != 2 or votes.shape[1] == 0:
        raise ValueError(f"expected votes [N, V] with at least one voter, got {list(votes.shape)}")
    classes, inverse = torch.unique(votes, return_inverse=True)  # inverse: [N, V] class indices
    V = inverse.shape[1]
    one_hot = torch.nn.functional.one_hot(inverse, len(classes))  # [N, V, C]
    counts = one_hot.sum(1)  # [N, C]
    position = torch.arange(V).view(1, V, 1).expand_as(one_hot)
    first = torch.where(one_hot.bool(), position, V).amin(1)  # [N, C] first voter giving each class
    key = counts * (V + 1) - first  # more votes first, then the earlier first appearance
    return classes[key.argmax(1)]


def _snap(values: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Each value → the nearest class (the smaller one on a tie)."""
    c = classes.sort().values.to(torch.float64)
    return c[(values.to(torch.float64)[:, None] - c[None]).abs().argmin(1)].to(classes.dtype)


def predict(train: dict[str, torch.Tensor], train_labels: torch.Tensor, test: dict[str, torch.Tensor],
            vote: str = "majority") -> tuple[torch.Tensor, torch.Tensor]:
    """DSiRe's prediction for every test model: ``(prediction [N_test], votes [N_test, V])``.

    ``vote="majority"`` (the paper) or ``"average"`` (Table 5's ablation: the mean of the voters' labels, snapped
    to the nearest training size).
    """
    votes = nearest_neighbour_votes(train, train_labels, test)
    if vote == "majority":
        return majority_vote(votes), votes
    if vote == "average":
        return _snap(votes.double().mean(1), train_labels.unique()), votes
    raise ValueError(f"vote must be 'majority' or 'average', got {vote!r}")


# ------------------------------------------------------------------------------------------------ protocol


def split_sets(n_sets: int, n_train_sets: int = 15, repeats: int = 10, seed: int = 42) -> list[list[int]]:
    """The paper's splits: one ``random.Random(seed)``, then ``repeats`` draws of ``sample(range(n_sets),
    n_train_sets)`` train-set indices (the rest are test). With 50, 15, 42 the first is [40, 7, 1, 17, …]."""
    if not 0 < n_train_sets < n_sets:
        raise ValueError(f"need 0 < n_train_sets < n_sets to leave sets for testing, got {n_train_sets} of {n_sets}")
    rng = random.Random(seed)
    return [rng.sample(range(n_sets), n_train_sets) for _ in range(repeats)]


def scores(y_true, y_pred) -> dict[str, float]:
    """Accuracy (%), MAE (images) and MAPE (%) as in the official code (scikit-learn)."""
    from sklearn.metrics import accuracy_score, mean_absolute_error, mean_absolute_percentage_error

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"accuracy": 100 * accuracy_score(y_true, y_pred), "mae": mean_absolute_error(y_true, y_pred),
            "mape": 100 * mean_absolute_percentage_error(y_true, y_pred)}


def cross_validate(features: dict[str, torch.Tensor], sizes, sets: Sequence, n_train_sets: int = 15,
                   repeats: int = 10, seed: int = 42, vote: str = "majority", set_order: Sequence | None = None
                   ) -> dict:
    """Run the paper's protocol: ``repeats`` random splits of the personalisation sets (``split_sets``), fit on
    the models of ``n_train_sets`` sets, predict every model of the others, and average the metrics.

    ``features: {voter: [N, d_v]}``; ``sizes: [N]`` dataset sizes (the labels); ``sets: [N]`` set names. Index ``i``
    of ``split_sets`` is the i-th name of ``set_order`` (default: the names sorted, which is the official order for
    the integer names 1..50 of medium/high; for low pass the official Concept101 list to get its splits). Training
    models are ordered by set (in sampled order), then by size, as the official faiss index is filled.
    Returns ``{metric_mean, metric_std}`` for accuracy (%), mae, mape (%) (std over splits, ddof 0), the
    per-split values under ``accuracy``, ``mae``, ``mape`` and the train-set names of each split under ``splits``.
    """
    sizes = torch.as_tensor(np.asarray(sizes)).long()
    sets = list(sets)
    n = len(sizes)
    if len(sets) != n or any(v.shape[0] != n for v in features.values()):
        raise ValueError(f"features, sizes and sets must describe the same {n} models")
    for v in features.values():
        require_finite(v, "features hold NaN or infinite values")
    names = sorted(set(sets)) if set_order is None else list(set_order)
    if set(names) != set(sets) or len(names) != len(set(names)):
        raise ValueError(f"set_order must list every set name once; got {len(names)} names for {len(set(sets))} sets")
    per = {m: [] for m in METRICS}
    splits = []
    for train_idx in split_sets(len(names), n_train_sets, repeats, seed):
        order = {names[i]: k for k, i in enumerate(train_idx)}
        tr = sorted((i for i in range(n) if sets[i] in order), key=lambda i: (order[sets[i]], int(sizes[i]), i))
        te = [i for i in range(n) if sets[i] not in order]
        tr_t, te_t = torch.tensor(tr), torch.tensor(te)
        pred, _ = predict({k: v[tr_t] for k, v in features.items()}, sizes[tr_t],
                          {k: v[te_t] for k, v in features.items()}, vote)
        for m, value in scores(sizes[te_t].numpy(), pred.numpy()).items():
            per[m].append(value)
        splits.append([names[i] for i in train_idx])
    out: dict = {}
    for m in METRICS:
        out[f"{m}_mean"], out[f"{m}_std"] = float(np.mean(per[m])), float(np.std(per[m]))
    return {**out, **per, "splits": splits}
