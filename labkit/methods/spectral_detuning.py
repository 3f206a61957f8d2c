"""Spectral DeTuning: recover pre-fine-tuning weights from several LoRA fine-tunes (lab 05).

Horwitz, Kahana & Hoshen, *Recovering the Pre-Fine-Tuning Weights of Generative Models*, ICML 2024
(arXiv 2402.10208), §4. Taught in ``notebooks/05_spectral_detuning.ipynb``.

An attacker sees ``n`` merged fine-tunes of one layer, ``W'_i = W_P + s_i B_i A_i`` (rank ``r``), and solves

    min over W*, M_1..M_n of   Σ_i ‖W'_i − (W* + M_i)‖_F²    subject to rank(M_i) ≤ r

by alternating two closed-form steps from ``W* = mean_i W'_i`` (the "Mean LoRA" baseline):

* **M-step** ``M_i ← rank-r truncated SVD of (W'_i − W*)`` (Eckart–Young), randomized ``torch.svd_lowrank``
  (Halko et al., 2 power iterations) by default as in the official code, exact ``torch.linalg.svd`` on request;
* **W-step** ``W* ← mean_i (W'_i − M_i)``.

The rank ``r`` follows ``IncreaseRankOnPlateau``: it starts at 1, doubles after more than 15 iterations
without a strictly lower loss, and is forced to the end rank from half of the iterations on. The loop always
runs ``n_iters`` iterations; the loss logged (and fed to the scheduler) is the official one,
``mean_i mean((W'_i − W*_new − M_i)²)`` with the new ``W*`` and the old ``M_i``.

Speed (DESIGN §10). ``spectral_detuning_layers`` runs many same-shaped layers at once: all ``n`` residuals of
all layers go through one batched SVD per iteration (layers whose scheduler sits at different ranks go
through one batched SVD per distinct rank, so every layer keeps exactly its own ``q``). On top of that, when
the merged matrices differ from their mean only by a low-rank part (true for LoRA merges: every
``W'_i − mean W'`` lies in the span of the ``B_j`` and ``A_j``, rank ≤ n·end_rank), the whole iteration runs
in that subspace: with orthonormal bases ``P`` (columns) and ``Q`` (rows), ``W* = mean W' + P z Qᵀ`` and the
algorithm iterates on the small ``[k_out, k_in]`` matrices ``Pᵀ(W'_i − mean W')Q``. SVD commutes with the
rotation, so with an exact SVD this is the same algorithm to float rounding; with ``svd_lowrank`` the Gaussian
test matrix seen by the subspace (``Qᵀ R``) is again standard Gaussian, so each run is a draw from the same
distribution (the random numbers differ, so traces are not bit-identical to the official code). The subspace
is only used when it reproduces every ``W'_i`` to the rounding of the input dtype (rms residual within
4·eps·rms(W'), plus what the float64 projection itself can resolve; see ``_subspace``); otherwise the plain
path runs.
Measured on 2 CPU cores (768², 5 LoRAs of rank 16, 300 iterations): 0.6 s per layer against 7.4 s for the
loop, same W-Error (≈ −17.8); batching the SVDs alone gives ≈ 1× there (the matmuls dominate), the subspace
gives the speed-up. On a GPU the plain batched path is fast too.

The per-layer Python loop of the official code is kept as ``spectral_detuning_loop``: it is the reference
the tests and ``benchmarks/bench_spectral_detuning.py`` compare against, not the one to use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from labkit.methods.checks import require_choice, require_finite

__all__ = [
    "DetuningResult",
    "IncreaseRankOnPlateau",
    "RankSchedulerState",
    "converged_share",
    "final_loss",
    "layer_mse",
    "m_step",
    "mean_lora",
    "rank_scheduler_init",
    "rank_scheduler_step",
    "scheduler_rule",
    "spectral_detuning",
    "spectral_detuning_layers",
    "spectral_detuning_loop",
    "w_error",
    "w_step",
]

SVD_METHODS = ("lowrank", "exact")


# --------------------------------------------------------------------------------------------------------
# the rank scheduler (paper §4.3; official ``IncreaseRankOnPlateau``)
# --------------------------------------------------------------------------------------------------------


class RankSchedulerState(NamedTuple):
    """State of ``IncreaseRankOnPlateau`` for one layer (0-d tensors) or many (``[n_layers]`` tensors)."""

    rank: torch.Tensor  # int64, the rank the next iteration uses
    best: torch.Tensor  # float64, lowest loss seen so far (+inf before the first step)
    num_bad_steps: torch.Tensor  # int64, consecutive steps without a strictly lower loss
    epoch: int  # steps taken so far


def rank_scheduler_init(start_rank: int = 1, n_layers: int | None = None) -> RankSchedulerState:
    """Fresh scheduler state: ``rank = start_rank``, ``best = +inf``, no bad steps; ``[n_layers]`` if given."""
    shape = () if n_layers is None else (int(n_layers),)
    return RankSchedulerState(
        rank=torch.full(shape, int(start_rank), dtype=torch.int64),
        best=torch.full(shape, math.inf, dtype=torch.float64),
        num_bad_steps=torch.zeros(shape, dtype=torch.int64),
        epoch=0,
    )


def rank_scheduler_step(
    state: RankSchedulerState,
    loss: float | torch.Tensor,
    *,
    n_iters: int,
    end_rank: int,
    factor: int = 2,
    patience: int = 15,
    force_end_rank_percent: float = 0.5,
) -> RankSchedulerState:
    """One step of ``IncreaseRankOnPlateau`` after an iteration with this ``loss``; returns the new state.

    Pure (the input state is not changed) and vectorised: ``loss`` is a number or a ``[n_layers]`` tensor
    matching ``state``. The step counter ``epoch`` becomes ``state.epoch + 1``; then

    * if ``epoch < n_iters − n_iters·force_end_rank_percent`` (150 for 300 iterations): the loss is better iff
      it is strictly below ``best`` (threshold 0); better → ``best = loss``, bad steps = 0; otherwise bad
      steps += 1, and once they exceed ``patience`` (the 16th non-improving step) the rank becomes
      ``min(rank·factor, end_rank)`` and the count restarts (``best`` is kept);
    * otherwise the rank is ``end_rank``.

    The new ``state.rank`` is the rank of the *next* iteration.
    """
    loss = torch.as_tensor(loss, dtype=torch.float64).detach().cpu()
    epoch = state.epoch + 1
    if epoch >= n_iters - n_iters * force_end_rank_percent:
        return RankSchedulerState(torch.full_like(state.rank, int(end_rank)), state.best, state.num_bad_steps,
                                  epoch)
    better = loss < state.best
    best = torch.where(better, loss, state.best)
    bad = torch.where(better, torch.zeros_like(state.num_bad_steps), state.num_bad_steps + 1)
    grow = bad > patience
    rank = torch.where(grow, (state.rank * int(factor)).clamp(max=int(end_rank)), state.rank)
    bad = torch.where(grow, torch.zeros_like(bad), bad)
    return RankSchedulerState(rank, best, bad, epoch)


class IncreaseRankOnPlateau:
    """The official scheduler's interface over ``rank_scheduler_step``: ``step(loss)``, then ``curr_rank``.

    ``ReduceLROnPlateau`` turned around: the rank (not the learning rate) changes on a plateau, and it grows.
    With ``n_layers`` the state is a vector and ``step`` takes a ``[n_layers]`` loss.
    """

    def __init__(self, n_iters: int, end_rank: int, start_rank: int = 1, factor: int = 2, patience: int = 15,
                 force_end_rank_percent: float = 0.5, n_layers: int | None = None):
        if not 1 <= start_rank <= end_rank:
            raise ValueError(f"need 1 <= start_rank <= end_rank, got start_rank={start_rank}, end_rank={end_rank}")
        self.kwargs = {"n_iters": int(n_iters), "end_rank": int(end_rank), "factor": int(factor),
                       "patience": int(patience), "force_end_rank_percent": float(force_end_rank_percent)}
        self.state = rank_scheduler_init(start_rank, n_layers)

    def step(self, loss: float | torch.Tensor) -> int | torch.Tensor:
        """Record one iteration's loss; return the rank for the next iteration."""
        self.state = rank_scheduler_step(self.state, loss, **self.kwargs)
        return self.curr_rank

    @property
    def curr_rank(self) -> int | torch.Tensor:
        return int(self.state.rank) if self.state.rank.ndim == 0 else self.state.rank.clone()


# --------------------------------------------------------------------------------------------------------
# results, baseline and the W-Error metric (paper §5)
# --------------------------------------------------------------------------------------------------------


@dataclass
class DetuningResult:
    """What Spectral DeTuning returns.

    ``W_star``: the recovered weights, ``[d_out, d_in]`` (one layer) or ``[n_layers, d_out, d_in]``, on the
    input's device and dtype. ``loss``: float64 ``[n_iters]`` or ``[n_iters, n_layers]`` on the CPU, the official
    per-iteration loss. ``rank``: int64, same shape, the rank each iteration used. ``subspace``: whether the
    iteration ran in the low-rank subspace (see the module docstring).
    """

    W_star: torch.Tensor
    loss: torch.Tensor
    rank: torch.Tensor
    subspace: bool = False


def mean_lora(merged: torch.Tensor) -> torch.Tensor:
    """The "Mean LoRA" baseline (and the algorithm's starting point): ``[..., n, d_out, d_in] → [..., d_out, d_in]``."""
    merged = _as_merged(merged, min_ndim=3)
    return merged.mean(-3)


def layer_mse(W_star: torch.Tensor, W_P: torch.Tensor) -> torch.Tensor:
    """Per-layer MSE ``mean((W* − W_P)²)`` in float64: ``[..., d_out, d_in]`` twice → ``[...]``."""
    if not isinstance(W_star, torch.Tensor) or not isinstance(W_P, torch.Tensor):
        raise TypeError("layer_mse takes two tensors: the recovered weights and the pre-fine-tuning weights")
    if W_star.shape != W_P.shape:
        raise ValueError(f"recovered and pre-fine-tuning weights differ in shape: {list(W_star.shape)} vs "
                         f"{list(W_P.shape)}")
    if W_star.ndim < 2:
        raise ValueError(f"expected weights [..., d_out, d_in], got shape {list(W_star.shape)}")
    diff = W_star.to(torch.float64) - W_P.to(W_star.device, torch.float64)
    return diff.square().mean((-2, -1))


def w_error(W_star: torch.Tensor, W_P: torch.Tensor) -> float:
    """W-Error: the mean over layers of ``log10`` of each layer's MSE (paper §5; lower is better).

    ``W_star, W_P: [d_out, d_in]`` or ``[n_layers, d_out, d_in]``. Float32 rounding puts the floor near −18;
    an exact match (MSE 0) gives ``-inf``.
    """
    return torch.log10(layer_mse(W_star, W_P)).mean().item()


def converged_share(W_star: torch.Tensor, W_P: torch.Tensor, threshold: float = -16.0) -> float:
    """Share of layers whose ``log10 MSE ≤ threshold`` (−16: the paper's "converged" layers)."""
    return (torch.log10(layer_mse(W_star, W_P)) <= threshold).double().mean().item()


# --------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------


def _as_merged(merged: torch.Tensor | Sequence[torch.Tensor], min_ndim: int = 3) -> torch.Tensor:
    if not isinstance(merged, torch.Tensor):
        mats = list(merged)
        if not all(isinstance(m, torch.Tensor) for m in mats):
            raise TypeError("expected a tensor [n_loras, d_out, d_in] or a list of [d_out, d_in] tensors")
        for i, m in enumerate(mats[1:], start=1):
            if m.shape != mats[0].shape:
                raise ValueError(f"expected fine-tuned matrices of one shape, got {list(mats[0].shape)} and "
                                 f"{list(m.shape)} (LoRA {i})")
        merged = torch.stack(mats) if mats else torch.empty(0, 1, 1)
    if merged.ndim < min_ndim:
        raise ValueError(f"expected merged weights [n_loras, d_out, d_in], got shape {list(merged.shape)}")
    if not merged.is_floating_point():
        raise TypeError(f"expected floating-point weights, got {merged.dtype}")
    return merged


def _check(merged: torch.Tensor, end_rank: int, start_rank: int, n_iters: int, svd: str) -> None:
    n, d_out, d_in = merged.shape[-3:]
    if n < 2:
        raise ValueError(f"Spectral DeTuning needs at least 2 fine-tuned versions of a layer, got {n}")
    require_choice(svd, SVD_METHODS, "svd")
    if int(n_iters) != n_iters or n_iters < 1:
        raise ValueError(f"n_iters must be a positive integer, got {n_iters!r}")
    if not 1 <= start_rank <= end_rank:
        raise ValueError(f"need 1 <= start_rank <= end_rank, got start_rank={start_rank}, end_rank={end_rank}")
    if end_rank > min(d_out, d_in):
        raise ValueError(f"end_rank={end_rank} is above min(d_out, d_in)={min(d_out, d_in)} for layers of shape "
                         f"[{d_out}, {d_in}]")
    require_finite(merged, "the merged weights contain NaN or inf; check the weights you loaded")


# --------------------------------------------------------------------------------------------------------
# the batched algorithm
# --------------------------------------------------------------------------------------------------------


def _low_rank(D: torch.Tensor, q: int, svd: str, niter: int) -> torch.Tensor:
    """Best rank-``q`` approximation of every matrix in ``D: [..., a, b]`` (M-step), batched."""
    if svd == "exact":
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        return (U[..., :q] * S[..., None, :q]) @ Vh[..., :q, :]
    U, S, V = torch.svd_lowrank(D, q=q, niter=niter)
    return (U * S.unsqueeze(-2)) @ V.mT


def _subspace(merged: torch.Tensor, end_rank: int, oversample: int = 8):
    """Bases ``P: [L, d_out, k_out]``, ``Q: [L, d_in, k_in]`` holding every ``W'_i − mean W'``, or None.

    A Gaussian sketch of size ``k = n·end_rank + oversample`` finds the column and row spaces (at most half of
    each side, else None). The subspace is used only if it reproduces every difference ``C_i = W'_i − mean W'``
    to the rounding of the weights: in float64, the residual itself ``R_i = C_i − P Pᵀ C_i Q Qᵀ`` is formed (not
    ``‖C‖² − ‖Pᵀ C Q‖²``, whose cancellation error is far above the bound) and, per layer,

        mean(R²) ≤ (4·eps)²·mean(W'²) + eps64²·(d_out + d_in)·mean(C²)

    with ``eps`` the input dtype's. The first term allows a few ulps rms of the weights (every merged weight
    carries a full-rank rounding of up to half an ulp); the second is what the float64 projection itself can
    resolve (its inner products over ``d_out`` and ``d_in`` terms, and the QR bases, round at about
    ``eps64·√d·rms(C)``; measured: a mean square error of 3–8·eps64²·mean(C²) in the computed ``R``, and about
    100·eps64²·mean(C²) left by the float64 bases for exact rank-40 differences of 256² and 512² layers).
    For float32 weights the second term is ~1e-17 of the first, so only float64 inputs need it: there the
    check cannot certify less than the float64 arithmetic, and the decision no longer depends on the BLAS
    summation order (thread count, CPU). Returns ``(P, Q, c, offset)`` with ``c = Pᵀ C Q: [L, n, k_out, k_in]``
    and the per-layer ``mean(R²)`` (a constant part of the loss), or None.
    """
    n, d_out, d_in = merged.shape[1:]
    k_out, k_in = min(d_out, n * end_rank + oversample), min(d_in, n * end_rank + oversample)
    if 2 * k_out > d_out or 2 * k_in > d_in:
        return None
    f64 = torch.float64  # the projections in float64, so they add no error above the weights' own rounding
    size = n * d_out * d_in
    C = merged.to(f64)  # may be ``merged`` itself: not changed in place
    scale = torch.linalg.vector_norm(C, dim=(1, 2, 3)).square() / size  # mean W'²
    C = C - C.mean(1, keepdim=True)  # a new tensor from here on
    mean_c2 = torch.linalg.vector_norm(C, dim=(1, 2, 3)).square() / size
    Y = (C @ torch.randn(n, d_in, k_out, dtype=f64, device=C.device)).sum(1)
    P = torch.linalg.qr(Y).Q  # [L, d_out, k_out]
    Y = (C.mT @ torch.randn(n, d_out, k_in, dtype=f64, device=C.device)).sum(1)
    Q = torch.linalg.qr(Y).Q  # [L, d_in, k_in]
    c = P.mT.unsqueeze(1) @ (C @ Q.unsqueeze(1))
    R = C.sub_((P.unsqueeze(1) @ c) @ Q.mT.unsqueeze(1))  # the residual, in place of C
    residual = torch.linalg.vector_norm(R, dim=(1, 2, 3)).square() / size
    del C, R
    eps, eps64 = torch.finfo(merged.dtype).eps, torch.finfo(f64).eps
    tol = (4 * eps) ** 2 * scale + eps64**2 * (d_out + d_in) * mean_c2
    if (residual > tol).any():
        return None
    return P, Q, c.to(merged.dtype), residual.cpu()


def spectral_detuning_layers(
    merged: torch.Tensor,
    end_rank: int = 16,
    n_iters: int = 300,
    *,
    start_rank: int = 1,
    svd: str = "lowrank",
    niter: int = 2,
    subspace: bool = True,
) -> DetuningResult:
    """Spectral DeTuning on many same-shaped layers at once, each with its own rank scheduler.

    ``merged: [n_layers, n_loras, d_out, d_in]`` (float; the device it is on is used) →
    ``DetuningResult`` with ``W_star: [n_layers, d_out, d_in]``, ``loss, rank: [n_iters, n_layers]``.
    ``end_rank`` must be at least the LoRAs' rank; ``svd="lowrank"`` (``torch.svd_lowrank`` with ``niter``
    power iterations, one shared Gaussian test matrix per batched call) or ``"exact"`` (``torch.linalg.svd``);
    ``subspace=False`` forces the plain full-size iteration (see the module docstring).
    Randomness comes from torch's global generator, as in the official code: seed it for repeatable runs.
    """
    merged = _as_merged(merged, min_ndim=4)
    if merged.ndim != 4:
        raise ValueError(f"expected merged weights [n_layers, n_loras, d_out, d_in], got {list(merged.shape)}")
    _check(merged, end_rank, start_rank, n_iters, svd)
    L, n, d_out, d_in = merged.shape
    with torch.no_grad():
        reduced = _subspace(merged, end_rank) if subspace else None
        if reduced is None:
            x, W, offset = merged, merged.mean(1), torch.zeros(L, dtype=torch.float64)
        else:
            P, Q, x, offset = reduced
            W = x.mean(1)  # ≈ 0: the subspace coordinates of mean W'
        state = rank_scheduler_init(start_rank, L)
        loss_trace = torch.empty(n_iters, L, dtype=torch.float64)
        rank_trace = torch.empty(n_iters, L, dtype=torch.int64)
        for it in range(n_iters):
            rank_trace[it] = state.rank
            ranks = state.rank.tolist()
            D = x - W.unsqueeze(1)
            if len(set(ranks)) == 1:
                M = _low_rank(D, ranks[0], svd, niter)
            else:  # one batched SVD per distinct rank: every layer keeps its own q
                M = torch.empty_like(D)
                for q in sorted(set(ranks)):
                    idx = torch.tensor([i for i, r in enumerate(ranks) if r == q], device=D.device)
                    M[idx] = _low_rank(D[idx], q, svd, niter)
            E = D.sub_(M)  # W'_i − W*_old − M_i
            E_mean = E.mean(1, keepdim=True)
            W = W + E_mean.squeeze(1)  # = mean_i (W'_i − M_i)
            loss = E.sub_(E_mean).square_().sum((1, 2, 3)) / (n * d_out * d_in)  # new W*, old M_i
            loss_trace[it] = loss.to("cpu", torch.float64) + offset
            state = rank_scheduler_step(state, loss_trace[it], n_iters=n_iters, end_rank=end_rank)
        if reduced is not None:
            W = (merged.to(P.dtype).mean(1) + P @ W.to(P.dtype) @ Q.mT).to(merged.dtype)
    return DetuningResult(W, loss_trace, rank_trace, subspace=reduced is not None)


def spectral_detuning(
    merged: torch.Tensor | Sequence[torch.Tensor],
    end_rank: int = 16,
    n_iters: int = 300,
    *,
    start_rank: int = 1,
    svd: str = "lowrank",
    niter: int = 2,
    subspace: bool = True,
) -> DetuningResult:
    """Spectral DeTuning on one layer: ``merged: [n_loras, d_out, d_in]`` (or a list of ``[d_out, d_in]``).

    Returns ``W_star: [d_out, d_in]`` and ``loss, rank: [n_iters]``. Arguments as ``spectral_detuning_layers``.
    """
    merged = _as_merged(merged, min_ndim=3)
    if merged.ndim != 3:
        raise ValueError(f"expected merged weights [n_loras, d_out, d_in] for one layer, got {list(merged.shape)}; "
                         "use spectral_detuning_layers for [n_layers, n_loras, d_out, d_in]")
    res = spectral_detuning_layers(merged.unsqueeze(0), end_rank, n_iters, start_rank=start_rank, svd=svd,
                                   niter=niter, subspace=subspace)
    return DetuningResult(res.W_star[0], res.loss[:, 0], res.rank[:, 0], res.subspace)


def spectral_detuning_loop(
    merged: torch.Tensor | Sequence[torch.Tensor],
    end_rank: int = 16,
    n_iters: int = 300,
    *,
    start_rank: int = 1,
    svd: str = "lowrank",
    niter: int = 2,
) -> DetuningResult:
    """Reference: the official per-layer loop, one SVD per LoRA in a Python loop, for tests and benchmarks.

    Same algorithm, arguments and result as ``spectral_detuning`` for one layer ``[n_loras, d_out, d_in]``; it
    consumes torch's RNG like the official code (one ``svd_lowrank`` call per LoRA, in order) and forms every
    ``M_i`` and the loss in full size. Use ``spectral_detuning`` / ``spectral_detuning_layers`` for real work.
    """
    merged = _as_merged(merged, min_ndim=3)
    if merged.ndim != 3:
        raise ValueError(f"expected merged weights [n_loras, d_out, d_in], got {list(merged.shape)}")
    _check(merged, end_rank, start_rank, n_iters, svd)
    n = merged.shape[0]
    scheduler = IncreaseRankOnPlateau(n_iters, end_rank, start_rank)
    losses, ranks = [], []
    with torch.no_grad():
        W_star = merged.mean(0)
        for _ in range(n_iters):
            rank = scheduler.curr_rank
            M = []
            for i in range(n):
                if svd == "exact":
                    U, S, Vh = torch.linalg.svd(merged[i] - W_star, full_matrices=False)
                    U, S, V = U[:, :rank], S[:rank], Vh[:rank].T
                else:
                    U, S, V = torch.svd_lowrank(merged[i] - W_star, q=rank, niter=niter)
                M.append(U @ torch.diag(S) @ V.T)
            W_star = torch.stack([merged[i] - M[i] for i in range(n)]).mean(0)
            loss = torch.stack([((merged[i] - W_star - M[i]) ** 2).mean() for i in range(n)]).mean().item()
            losses.append(loss)
            ranks.append(rank)
            scheduler.step(loss)
    return DetuningResult(W_star, torch.tensor(losses, dtype=torch.float64), torch.tensor(ranks))


# --------------------------------------------------------------------------------------------------------
# the two steps and the scheduler rule as small functions (taught one by one in notebook 05)
# --------------------------------------------------------------------------------------------------------


def m_step(merged: torch.Tensor, W_star: torch.Tensor, rank: int, *, svd: str = "exact", niter: int = 2) -> torch.Tensor:
    """M-step: ``M_i ← best rank-`rank` approximation of (W'_i − W*)`` (Eckart–Young), for every LoRA at once.

    ``merged: [..., n, d_out, d_in]``, ``W_star: [..., d_out, d_in]`` → ``M: [..., n, d_out, d_in]``.
    ``svd="exact"`` (``torch.linalg.svd``, the default here: deterministic) or ``"lowrank"`` (the official
    ``torch.svd_lowrank`` with ``niter`` power iterations). Notebook 05, "build it step by step".
    """
    require_choice(svd, SVD_METHODS, "svd")
    if merged.ndim < 3 or W_star.shape != merged.shape[:-3] + merged.shape[-2:]:
        raise ValueError(f"expected merged [..., n, d_out, d_in] and W_star [..., d_out, d_in], got "
                         f"{list(merged.shape)} and {list(W_star.shape)}")
    return _low_rank(merged - W_star.unsqueeze(-3), int(rank), svd, niter)


def w_step(merged: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """W-step: ``W* ← mean_i (W'_i − M_i)``; ``merged, M: [..., n, d_out, d_in]`` → ``[..., d_out, d_in]``."""
    if merged.shape != M.shape:
        raise ValueError(f"merged and M differ in shape: {list(merged.shape)} vs {list(M.shape)}")
    return (merged - M).mean(-3)


def scheduler_rule(rank: int, best: float, num_bad_steps: int, loss: float, epoch: int, n_iters: int,
                   end_rank: int) -> tuple[int, float, int]:
    """``IncreaseRankOnPlateau`` for one step in plain numbers: ``(rank, best, num_bad_steps)`` after step ``epoch``.

    ``epoch`` is the 1-based number of this step (iteration ``it`` is step ``it + 1``); patience 15, factor 2,
    end rank forced from step ``n_iters/2`` on. The same rule as ``rank_scheduler_step`` (which it calls).
    """
    state = RankSchedulerState(torch.tensor(int(rank)), torch.tensor(float(best), dtype=torch.float64),
                               torch.tensor(int(num_bad_steps)), int(epoch) - 1)
    new = rank_scheduler_step(state, float(loss), n_iters=n_iters, end_rank=end_rank)
    return int(new.rank), float(new.best), int(new.num_bad_steps)


def final_loss(loss: torch.Tensor, window: int = 10) -> torch.Tensor:
    """The loss the attacker can see at the end: mean of the last ``window`` iterations, ``[n_iters, ...] → [...]``.

    Averaging a few iterations smooths the randomized SVD's jitter (paper §6: the final loss predicts W-Error).
    """
    return loss[-int(window):].mean(0)
