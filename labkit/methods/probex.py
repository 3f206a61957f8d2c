"""ProbeX: learning from one hidden layer's weights, and aligning it to text (lab 02).

Horwitz*, Cavia*, Kahana*, Hoshen, *Learning on Model Weights using Tree Experts*, CVPR 2025 (arXiv 2410.13569),
§4–5; spec: ``reference/probex.md`` §2–3. Taught in ``notebooks/02_probex.ipynb``.

ProbeX reads one weight matrix ``X: [d_H, d_W]`` of a model (``nn.Linear``: ``[out, in]``)::

    R = X U                       U: [d_W, r_U]   learned probes (no bias)        → [d_H, r_U]
    P = ReLU(V Rᵀ)                V: [r_V, d_H]   shared probe projection (no bias) → [r_U, r_V]
    e = E vec(P) + b_E            E: [r_T, r_U·r_V]  all per-probe encoders fused in one Linear (probe-major)
    logits = head(e)              classification: Linear(r_T → d_Y); zero-shot: cos(e, T(text)) with no temperature

Parameters: ``d_W·r_U + d_H·r_V + (r_U·r_V + 1)·r_T`` for the encoder, plus ``(r_T + 1)·d_Y`` for the classifier
head (``probex_param_count``); the dense linear expert has ``(d_H·d_W + 1)·d_Y`` (``dense_expert_param_count``).

Entry points (all take a **pre-extracted** layer tensor, so a command-line wrapper can call them directly):

* ``stack_layer(states, name) -> X [N, d_H, d_W]`` — one layer of every model, the loader's tensor→matrix rules
  (``as_matrix``); done once, never per training step (spec §6).
* ``train_probex(X_train, Y_train, X_val, Y_val, **settings) -> (model, history)`` — multi-hot targets
  ``Y: [N, C]`` (0/1), BCE-with-logits, Adam, best-val checkpoint (strictly greater), evaluated every
  ``eval_every`` epochs starting at epoch 0 (spec §3).
* ``probex_accuracy(model, X, Y) -> float`` — the metric: mean per-label binary accuracy of ``sigmoid > 0.5``
  (``binary_accuracy``; chance 50 % when half the labels are on).
* ``train_dense_expert`` and ``train_statnn`` — the two baselines, same trainer, same selection.
* ``train_zero_shot(X_train, y_train, text_train, X_val, y_val, **settings) -> (model, history)`` — the text head:
  frozen text embeddings ``[C, d_text]`` projected to ``r_T``, cosine logits, cross-entropy;
  ``zero_shot_accuracy(model, X, y, text)`` is top-1 over the candidate texts; ``draw_heldout_concepts`` draws
  further held-out sets that keep every attribute seen; ``calibrated_stacking`` and ``choose_calibration`` are the
  generalised zero-shot calibration of Chao et al. 2016.
* ``nearest_root_router(X, roots) -> tree index [N]`` — the unsupervised router of the mixture of experts.

Defaults are the official discriminative ones (r_U = r_V = 128, r_T = 128 as in its sbatch script, Adam 1e-3,
weight decay 1e-5, batch 128, 500 epochs, eval every 25) and generative ones (r_T = 512, Adam 2e-3, 200 epochs,
eval every 10); the notebook scales them to the mini-jungle and says how.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from labkit.methods.checks import require_finite

__all__ = [
    "DenseExpert",
    "History",
    "ProbeX",
    "ProbeXClassifier",
    "ProbeXZeroShot",
    "StatMLP",
    "as_matrix",
    "binary_accuracy",
    "calibrated_stacking",
    "choose_calibration",
    "cosine_logits",
    "dense_expert_param_count",
    "draw_heldout_concepts",
    "fit_multilabel",
    "forward_flops",
    "nearest_root_router",
    "probe_responses",
    "probex_accuracy",
    "probex_param_count",
    "stack_layer",
    "statnn_layer_features",
    "train_dense_expert",
    "train_probex",
    "train_statnn",
    "train_zero_shot",
    "zero_shot_accuracy",
]


# --------------------------------------------------------------------------------------------- input (spec §2)


def as_matrix(W: torch.Tensor) -> torch.Tensor:
    """The official loader's tensor → matrix rules (spec §2 "Tensor → matrix"), reproduced exactly.

    2-D stays; 1-D ``[d]`` → ``[d, 1]``; more dims that squeeze to 2-D (or 1-D) are squeezed (1×1 conv
    ``[out, in, 1, 1]`` → ``[out, in]``); otherwise a raw memory reshape to ``[-1, out]`` (a k×k conv →
    ``[in·k·k, out]``; we apply the same reshape to a single-channel conv that squeezes to 3-D).
    """
    if W.ndim == 2:
        return W
    if W.ndim == 1:
        return W[:, None]
    if W.ndim == 0:
        raise ValueError("a scalar is not a layer; ProbeX needs a weight matrix")
    squeezed = W.squeeze()
    if squeezed.ndim <= 2:
        return squeezed if squeezed.ndim == 2 else squeezed.reshape(-1, 1)
    return W.reshape(-1, W.shape[0])


def stack_layer(states: Sequence[Mapping[str, torch.Tensor]], name: str, transpose: bool = False) -> torch.Tensor:
    """Pre-extract layer ``name`` of every model into one float32 tensor ``X: [N, d_H, d_W]`` (spec §6).

    ``transpose=True`` probes the other side (``[d_W, d_H]``): ProbeX multiplies the probes into ``d_W``.
    """
    if not states:
        raise ValueError("stack_layer needs at least one model")
    missing = [i for i, s in enumerate(states) if name not in s]
    if missing:
        raise KeyError(f"layer {name!r} is missing from models {missing[:5]}; some names: {list(states[0])[:6]}")
    mats = [as_matrix(s[name].detach()).float() for s in states]
    shapes = sorted({tuple(m.shape) for m in mats})
    if len(shapes) > 1:
        raise ValueError(f"layer {name!r} has different shapes across models: {shapes[:3]}; stack one tree at a time")
    X = torch.stack(mats)
    return X.transpose(1, 2).contiguous() if transpose else X


def _check_X(X: torch.Tensor, what: str = "X") -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        shape = list(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"{what} must be a stacked layer [N, d_H, d_W], got {shape}")
    require_finite(X, f"{what} contains NaN or inf weights")


def _check_Y(Y: torch.Tensor, n: int, what: str = "Y") -> None:
    if Y.ndim != 2 or len(Y) != n:
        raise ValueError(f"{what} must be multi-hot labels [N={n}, C], got {list(Y.shape)}")
    if not ((Y == 0) | (Y == 1)).all():
        raise ValueError(f"{what} must hold only 0 and 1 (a multi-hot class set per model)")


# ------------------------------------------------------------------------------------- the model (spec §2)


def probe_responses(X: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``ReLU(V (X U)ᵀ)``: ``X: [B, d_H, d_W]``, probes ``U: [d_W, r_U]``, shared ``V: [r_V, d_H]`` → ``[B, r_U, r_V]``."""
    return torch.relu((X @ U).transpose(1, 2) @ V.T)


def cosine_logits(e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``normalize(e) @ normalize(t)ᵀ``: ``e: [B, r_T]``, ``t: [C, r_T]`` → ``[B, C]`` in [−1, 1] (no temperature)."""
    return F.normalize(e, dim=-1) @ F.normalize(t, dim=-1).T


class ProbeX(nn.Module):
    """The ProbeX encoder: ``forward(X: [B, d_H, d_W]) -> e: [B, r_T]`` (spec §2; default PyTorch inits)."""

    def __init__(self, d_H: int, d_W: int, n_probes: int = 128, proj_dim: int = 128, rep_dim: int = 128):
        super().__init__()
        self.d_H, self.d_W = d_H, d_W
        self.U = nn.Linear(d_W, n_probes, bias=False)  # the probes: U = self.U.weight.T, [d_W, r_U]
        self.V = nn.Linear(d_H, proj_dim, bias=False)  # shared probe projection
        self.E = nn.Linear(n_probes * proj_dim, rep_dim)  # the fused per-probe encoders, with bias

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[-2:] != (self.d_H, self.d_W):
            raise ValueError(f"this ProbeX reads [{self.d_H}, {self.d_W}] layers, got {list(X.shape[-2:])}")
        return self.E(probe_responses(X, self.U.weight.T, self.V.weight).flatten(1))  # flatten is probe-major


class ProbeXClassifier(nn.Module):
    """``ProbeX`` + ``Linear(r_T → d_Y)`` (with bias): logits ``[B, d_Y]``."""

    def __init__(self, d_H: int, d_W: int, d_Y: int, n_probes: int = 128, proj_dim: int = 128, rep_dim: int = 128):
        super().__init__()
        self.encoder = ProbeX(d_H, d_W, n_probes, proj_dim, rep_dim)
        self.head = nn.Linear(rep_dim, d_Y)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(X))


class ProbeXZeroShot(nn.Module):
    """``ProbeX`` + the text head: ``forward(X, text: [C, d_text]) -> cos(e, T text) [B, C]``.

    ``T = Linear(d_text → r_T)`` (with bias; the official "regression_head") maps text *into* weight space.
    """

    def __init__(self, d_H: int, d_W: int, d_text: int, n_probes: int = 128, proj_dim: int = 128,
                 rep_dim: int = 512):
        super().__init__()
        self.encoder = ProbeX(d_H, d_W, n_probes, proj_dim, rep_dim)
        self.text_proj = nn.Linear(d_text, rep_dim)

    def forward(self, X: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.encoder(X), self.text_proj(text))


class DenseExpert(nn.Module):
    """The dense linear expert: ``Linear(d_H·d_W → d_Y)`` on the flattened layer (spec §1)."""

    def __init__(self, d_H: int, d_W: int, d_Y: int):
        super().__init__()
        self.linear = nn.Linear(d_H * d_W, d_Y)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X.flatten(1))


def statnn_layer_features(X: torch.Tensor) -> torch.Tensor:
    """StatNN's statistics of one stacked layer (Unterthiner et al. 2020; reference/probex.md §8): mean, variance
    and the 0/25/50/75/100 % quantiles of the layer's weights. ``X: [N, d_H, d_W]`` → ``[N, 7]`` float32.
    (ProbeGen's ``statnn_param_features`` takes every tensor of a network and uses the standard deviation.)"""
    flat = X.flatten(1).float()
    if len(flat) == 0:
        return flat.new_zeros(0, 7)
    q = torch.quantile(flat, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), dim=1).T
    return torch.cat([flat.mean(1, keepdim=True), flat.var(1, keepdim=True), q], dim=1)


class StatMLP(nn.Module):
    """StatNN's small MLP on standardised statistics: ``X: [B, d_H, d_W] → [B, d_Y]`` (statistics computed inside).

    ``net`` maps standardised features ``[B, 1, 7]`` to logits (the shape ``fit_multilabel`` trains on).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, d_Y: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(len(mean), hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, d_Y))

    def standardise(self, X: torch.Tensor) -> torch.Tensor:
        """``X: [B, d_H, d_W]`` → standardised statistics ``[B, 1, 7]``."""
        return ((statnn_layer_features(X) - self.mean) / self.std)[:, None]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(X))


# --------------------------------------------------------------------------------------- counts (spec §2 table)


def probex_param_count(d_H: int, d_W: int, d_Y: int, n_probes: int = 128, proj_dim: int = 128,
                       rep_dim: int = 128) -> int:
    """``d_W·r_U + d_H·r_V + (r_U·r_V + 1)·r_T + (r_T + 1)·d_Y`` (ProbeX with the classification head)."""
    return d_W * n_probes + d_H * proj_dim + (n_probes * proj_dim + 1) * rep_dim + (rep_dim + 1) * d_Y


def dense_expert_param_count(d_H: int, d_W: int, d_Y: int) -> int:
    """``(d_H·d_W + 1)·d_Y``."""
    return (d_H * d_W + 1) * d_Y


def forward_flops(d_H: int, d_W: int, d_Y: int, n_probes: int = 128, proj_dim: int = 128,
                  rep_dim: int = 128) -> dict[str, int]:
    """Multiply-accumulates per model of one forward pass: ``{"probex": …, "dense": …}``.

    ProbeX: ``d_H·d_W·r_U`` (X U) + ``r_U·d_H·r_V`` (V) + ``r_U·r_V·r_T`` (E) + ``r_T·d_Y``; dense: ``d_H·d_W·d_Y``.
    """
    probex = d_H * d_W * n_probes + n_probes * d_H * proj_dim + n_probes * proj_dim * rep_dim + rep_dim * d_Y
    return {"probex": probex, "dense": d_H * d_W * d_Y}


# ------------------------------------------------------------------------------------- metric and training


def binary_accuracy(logits: torch.Tensor, Y: torch.Tensor) -> float:
    """Mean per-label binary accuracy: ``sigmoid(logits) > 0.5`` against ``Y`` (0/1), over models × labels."""
    if logits.shape != Y.shape:
        raise ValueError(f"logits {list(logits.shape)} and labels {list(Y.shape)} must have the same shape")
    return float(((logits > 0).float() == Y.float()).float().mean())


@dataclass
class History:
    """What training logged: ``epochs`` evaluated, their ``train_loss`` and ``val_acc``; the kept ``best_epoch``."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = float("-inf")


@torch.no_grad()
def _predict(model: nn.Module, X: torch.Tensor, *args, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(X[i:i + batch_size], *args) for i in range(0, max(len(X), 1), batch_size)])
    model.train()
    return out


def _train_loop(model: nn.Module, batch_loss, n: int, validate, *, lr: float, weight_decay: float, epochs: int,
                batch_size: int, eval_every: int, seed: int, ties_to_later: bool) -> tuple[nn.Module, History]:
    """The official loop shared by both trainers: Adam over shuffled mini-batches of ``n`` training indices
    (``batch_loss(idx)`` → scalar); ``validate()`` every ``eval_every`` epochs from epoch 0 (the last epoch only
    if it falls on that grid); the best-val checkpoint is returned (``>=`` when ``ties_to_later``), or the model
    after the last epoch when ``validate`` is None."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    hist, best = History(), None
    for epoch in range(epochs):
        losses = []
        for idx in torch.randperm(n, generator=g).split(batch_size):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if epoch % eval_every == 0:
            acc = validate() if validate is not None else float("nan")
            hist.epochs.append(epoch)
            hist.train_loss.append(sum(losses) / len(losses))
            hist.val_acc.append(acc)
            if validate is not None and (acc > hist.best_val or (ties_to_later and acc == hist.best_val)):
                hist.best_epoch, hist.best_val = epoch, acc
                best = copy.deepcopy(model.state_dict())
    if validate is not None:
        model.load_state_dict(best)
    else:
        hist.best_epoch = epochs - 1
    return model.eval(), hist


def fit_multilabel(model: nn.Module, X_train: torch.Tensor, Y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                   Y_val: torch.Tensor | None = None, *, lr: float = 1e-3, weight_decay: float = 1e-5,
                   epochs: int = 500, batch_size: int = 128, eval_every: int = 25, seed: int = 0
                   ) -> tuple[nn.Module, History]:
    """The official discriminative loop (spec §3) for any ``model: [B, d_H, d_W] → [B, C]``.

    BCE-with-logits on multi-hot targets, Adam, shuffled mini-batches; every ``eval_every`` epochs (epoch 0
    included, the last epoch only if it falls on that grid) the val metric; the checkpoint with the strictly best
    val accuracy is returned. Without a validation set (empty or None) the model after the last epoch is returned.
    """
    _check_X(X_train, "X_train")
    _check_Y(Y_train, len(X_train), "Y_train")
    has_val = X_val is not None and len(X_val) > 0
    if has_val:
        _check_X(X_val, "X_val")
        _check_Y(Y_val, len(X_val), "Y_val")
    Y_train = Y_train.float()
    return _train_loop(model, lambda idx: F.binary_cross_entropy_with_logits(model(X_train[idx]), Y_train[idx]),
                       len(X_train), (lambda: binary_accuracy(_predict(model, X_val), Y_val)) if has_val else None,
                       lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, eval_every=eval_every,
                       seed=seed, ties_to_later=False)


def _seeded(seed: int, make):
    torch.manual_seed(seed)  # the model's init (the official fix_seeds)
    return make()


def train_probex(X_train: torch.Tensor, Y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                 Y_val: torch.Tensor | None = None, *, n_probes: int = 128, proj_dim: int = 128, rep_dim: int = 128,
                 lr: float = 1e-3, weight_decay: float = 1e-5, epochs: int = 500, batch_size: int = 128,
                 eval_every: int = 25, seed: int = 0) -> tuple[ProbeXClassifier, History]:
    """Train one ProbeX expert (one tree, one layer). ``X: [N, d_H, d_W]``, ``Y: [N, C]`` 0/1 → ``(model, history)``."""
    _check_X(X_train, "X_train")
    model = _seeded(seed, lambda: ProbeXClassifier(X_train.shape[1], X_train.shape[2], Y_train.shape[1], n_probes,
                                                   proj_dim, rep_dim))
    return fit_multilabel(model, X_train, Y_train, X_val, Y_val, lr=lr, weight_decay=weight_decay, epochs=epochs,
                          batch_size=batch_size, eval_every=eval_every, seed=seed)


def train_dense_expert(X_train: torch.Tensor, Y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                       Y_val: torch.Tensor | None = None, **settings) -> tuple[DenseExpert, History]:
    """The dense linear expert, trained exactly like ProbeX (same loss, optimiser, selection; ``fit_multilabel``)."""
    _check_X(X_train, "X_train")
    seed = settings.get("seed", 0)
    model = _seeded(seed, lambda: DenseExpert(X_train.shape[1], X_train.shape[2], Y_train.shape[1]))
    return fit_multilabel(model, X_train, Y_train, X_val, Y_val, **settings)


def train_statnn(X_train: torch.Tensor, Y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                 Y_val: torch.Tensor | None = None, hidden: int = 32, **settings) -> tuple[StatMLP, History]:
    """StatNN: ``statnn_layer_features`` standardised on the training models + a small MLP, trained like ProbeX.

    The statistics are computed once per model (not per step); the MLP trains on them with ``fit_multilabel``.
    """
    _check_X(X_train, "X_train")
    feats = statnn_layer_features(X_train)
    seed = settings.get("seed", 0)
    model = _seeded(seed, lambda: StatMLP(feats.mean(0), feats.std(0).clamp_min(1e-12), Y_train.shape[1], hidden))
    has_val = X_val is not None and len(X_val) > 0
    F_val = model.standardise(X_val) if has_val else None
    _, hist = fit_multilabel(model.net, model.standardise(X_train), Y_train, F_val, Y_val if has_val else None,
                             **settings)
    return model.eval(), hist


def probex_accuracy(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """The Model-J metric of a trained classifier on ``X: [N, d_H, d_W]``, ``Y: [N, C]`` (``binary_accuracy``)."""
    _check_X(X)
    _check_Y(Y, len(X))
    return binary_accuracy(_predict(model, X), Y)


# ------------------------------------------------------------------------------------- zero-shot (spec §2–3)


@torch.no_grad()
def zero_shot_accuracy(model: ProbeXZeroShot, X: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> float:
    """Top-1 accuracy over the candidate texts: ``X: [N, d_H, d_W]``, ``y: [N]`` indices into ``text: [C, d_text]``."""
    _check_X(X)
    if y.shape != (len(X),) or (len(y) and (y.min() < 0 or y.max() >= len(text))):
        raise ValueError(f"y must be [N={len(X)}] class indices into the {len(text)} candidate texts")
    return float((_predict(model, X, text).argmax(1) == y).float().mean())


def train_zero_shot(X_train: torch.Tensor, y_train: torch.Tensor, text_train: torch.Tensor,
                    X_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None, *, n_probes: int = 128,
                    proj_dim: int = 128, rep_dim: int = 512, lr: float = 2e-3, epochs: int = 200,
                    batch_size: int = 128, eval_every: int = 10, seed: int = 0) -> tuple[ProbeXZeroShot, History]:
    """The generative/zero-shot trainer (spec §3): cross-entropy over cosine logits against the seen texts.

    ``X: [N, d_H, d_W]``, ``y: [N]`` indices into ``text_train: [C, d_text]`` (frozen embeddings); Adam, no weight
    decay; checkpoint = best val top-1 among the seen texts (``>=``, so ties move to later epochs), evaluated every
    ``eval_every`` epochs from epoch 0; without a validation set, the model after the last epoch.
    """
    _check_X(X_train, "X_train")
    if text_train.ndim != 2 or not torch.isfinite(text_train).all():
        raise ValueError(f"text_train must be finite embeddings [C, d_text], got {list(text_train.shape)}")
    has_val = X_val is not None and len(X_val) > 0
    model = _seeded(seed, lambda: ProbeXZeroShot(X_train.shape[1], X_train.shape[2], text_train.shape[1], n_probes,
                                                 proj_dim, rep_dim))
    return _train_loop(model, lambda idx: F.cross_entropy(model(X_train[idx], text_train), y_train[idx]),
                       len(X_train), (lambda: zero_shot_accuracy(model, X_val, y_val, text_train)) if has_val else None,
                       lr=lr, weight_decay=0.0, epochs=epochs, batch_size=batch_size, eval_every=eval_every, seed=seed,
                       ties_to_later=True)


def draw_heldout_concepts(attributes: Sequence[Sequence], n_heldout: int, seed: int = 0,
                          max_tries: int = 10_000) -> list[int]:
    """A random held-out set of ``n_heldout`` concepts that leaves every attribute value among the seen ones.

    ``attributes``: one tuple per concept, e.g. ``(digit, style)``; returns sorted concept indices. Seeded rejection
    sampling (``numpy.random.default_rng(seed)``), as the mini-jungle notes hold out concepts.
    """
    import numpy as np

    n = len(attributes)
    if not 0 < n_heldout < n:
        raise ValueError(f"n_heldout must be between 1 and {n - 1} (the number of concepts - 1), got {n_heldout}")
    values = [set(col) for col in zip(*attributes)]
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        held = set(rng.choice(n, size=n_heldout, replace=False).tolist())
        seen = [a for i, a in enumerate(attributes) if i not in held]
        if all({a[j] for a in seen} == v for j, v in enumerate(values)):
            return sorted(held)
    raise ValueError(f"no held-out set of {n_heldout} concepts keeps every attribute seen ({max_tries} tries)")


def calibrated_stacking(scores: torch.Tensor, seen: torch.Tensor, gamma: float) -> torch.Tensor:
    """Calibrated stacking (Chao et al., ECCV 2016, §3): ``scores - γ·seen``.

    ``scores: [N, C]`` (here cosine logits over seen and unseen descriptions), ``seen: [C]`` bool → ``[N, C]``.
    """
    if seen.shape != scores.shape[-1:]:
        raise ValueError(f"seen must be a [C={scores.shape[-1]}] mask over the candidates, got {list(seen.shape)}")
    return scores - gamma * seen.to(scores.dtype)


def choose_calibration(scores: torch.Tensor, y: torch.Tensor, seen: torch.Tensor,
                       gammas: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The γ of ``gammas`` with the best harmonic mean of seen- and unseen-class top-1 accuracy (first of equals).

    ``scores: [N, C]`` on calibration models, ``y: [N]`` their classes, ``seen: [C]`` bool → ``(γ, H [G])``.
    """
    if y.shape != scores.shape[:1]:
        raise ValueError(f"y must be [N={len(scores)}] class indices, got {list(y.shape)}")
    from_seen = seen[y]
    if from_seen.all() or not from_seen.any():
        raise ValueError("calibration needs models of both seen and unseen classes")
    H = []
    for g in gammas.tolist():
        hit = calibrated_stacking(scores, seen, g).argmax(1) == y
        s, u = hit[from_seen].float().mean(), hit[~from_seen].float().mean()
        H.append(2 * s * u / (s + u) if s + u > 0 else s.new_zeros(()))
    H = torch.stack(H)
    return float(gammas[int(H.argmax())]), H


# ---------------------------------------------------------------------------------------- router (spec §2)


def nearest_root_router(X: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """Send each model to the tree of its nearest root (L2 on one shared-shape layer).

    ``X: [N, d_H, d_W]``, ``roots: [T, d_H, d_W]`` → tree indices ``[N]`` (int64).
    """
    _check_X(X)
    _check_X(roots, "roots")
    if roots.shape[1:] != X.shape[1:]:
        raise ValueError(f"roots {list(roots.shape[1:])} and models {list(X.shape[1:])} need the same layer shape")
    return torch.cdist(X.flatten(1).double(), roots.flatten(1).double()).argmin(1)
