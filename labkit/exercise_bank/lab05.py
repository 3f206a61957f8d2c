"""Lab 05 exercises: Spectral DeTuning (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import math
from functools import partial

import torch

from labkit.exercise_bank.core import register
from labkit.methods import spectral_detuning


def _lab05_merged(g, n, d_out, d_in, r, dtype=torch.float32):
    W_P = torch.randn(d_out, d_in, generator=g, dtype=dtype)
    B, A = torch.randn(n, d_out, r, generator=g, dtype=dtype), torch.randn(n, r, d_in, generator=g, dtype=dtype)
    return W_P + B @ A


def _m_step_cases():
    g = torch.Generator().manual_seed(5)
    merged = _lab05_merged(g, 4, 7, 5, 2)
    return [
        ("4 LoRAs of a 7×5 layer, W* = their mean, rank 2", (merged, merged.mean(0), 2)),
        ("rank 1", (merged, merged.mean(0), 1)),
        ("W* = 0: the rank-r part of each W'_i itself", (merged, torch.zeros(7, 5), 2)),
        ("wide 3×6 layer, 3 LoRAs, float64", (_lab05_merged(g, 3, 3, 6, 1, torch.float64),
                                               torch.zeros(3, 6, dtype=torch.float64), 1)),
        ("rank = min(d_out, d_in) keeps the whole residual", (merged, merged[0], 5)),
    ]


def _w_step_cases():
    g = torch.Generator().manual_seed(6)
    merged = _lab05_merged(g, 4, 6, 5, 2)
    return [
        ("4 LoRAs, M = 0 gives the Mean-LoRA", (merged, torch.zeros_like(merged))),
        ("random M", (merged, torch.randn(4, 6, 5, generator=g))),
        ("M = W' − W_P for every i gives W_P back", (merged, merged - merged[:1])),
        ("two LoRAs, float64", (merged[:2].double(), torch.randn(2, 6, 5, generator=g, dtype=torch.float64))),
    ]


def _scheduler_cases():
    inf = float("inf")
    return [
        ("first step: any loss beats +inf", (1, inf, 0, 0.5, 1, 300, 16)),
        ("a strictly lower loss resets the bad steps", (2, 0.5, 7, 0.4, 40, 300, 16)),
        ("an equal loss is not better", (2, 0.5, 3, 0.5, 40, 300, 16)),
        ("the 15th bad step keeps the rank", (2, 0.5, 14, 0.6, 40, 300, 16)),
        ("the 16th bad step doubles the rank and restarts the count", (2, 0.5, 15, 0.6, 40, 300, 16)),
        ("doubling stops at the end rank", (12, 0.5, 15, 0.6, 60, 300, 16)),
        ("from step n_iters/2 on the rank is the end rank", (1, 0.5, 0, 0.1, 150, 300, 16)),
        ("just before the forced end the plateau rule still runs", (4, 0.5, 0, 0.1, 149, 300, 16)),
    ]


def _m_step_of_merged(merged, W_star, rank):
    return spectral_detuning.m_step(merged, torch.zeros_like(W_star), rank)


def _w_step_mean_lora(merged, M):
    return merged.mean(0)


def _uncapped(rank, best, num_bad_steps, loss, epoch, n_iters, end_rank):
    new = spectral_detuning.scheduler_rule(rank, best, num_bad_steps, loss, epoch, n_iters, 10**9)
    return new if epoch < n_iters - n_iters * 0.5 else (end_rank, *new[1:])


def detune(merged, end_rank, n_iters, *, m_step=spectral_detuning.m_step, on_step=None):
    """Spectral DeTuning of one layer, built from the three steps (exercise 05.detune).

    ``merged: [n, d_out, d_in]`` -> ``(W_star [d_out, d_in], loss [n_iters] float64, rank [n_iters] int64)``: start
    at the Mean-LoRA, then every iteration an M-step at the scheduler's rank (``m_step``, exact SVD by default), a
    W-step, the official loss (new W*, the M just computed) and one ``scheduler_rule`` step. With the default
    ``m_step`` it equals ``spectral_detuning_loop(merged, end_rank, n_iters, svd="exact")`` to float rounding.
    ``on_step(step, W_star)`` (1-based step) is called after every iteration, for logging only.
    """
    losses, ranks = [], []
    W_star = merged.mean(0)
    state = (1, math.inf, 0)  # (rank, best loss, bad steps)
    for it in range(n_iters):
        rank = state[0]
        M = m_step(merged, W_star, rank)
        W_star = spectral_detuning.w_step(merged, M)
        loss = (merged - W_star - M).square().mean().item()
        state = spectral_detuning.scheduler_rule(*state, loss, it + 1, n_iters, end_rank)
        losses.append(loss)
        ranks.append(rank)
        if on_step is not None:
            on_step(it + 1, W_star)
    return W_star, torch.tensor(losses, dtype=torch.float64), torch.tensor(ranks, dtype=torch.int64)


def _detune_cases():
    g = torch.Generator().manual_seed(55)
    one = _lab05_merged(g, 1, 8, 6, 2, torch.float64)
    return [
        ("4 LoRAs of rank 1 on an 8x6 layer, end rank 1, 40 iterations",
         (_lab05_merged(g, 4, 8, 6, 1, torch.float64), 1, 40)),
        ("3 LoRAs of rank 2, end rank 2, 40 iterations", (_lab05_merged(g, 3, 8, 6, 2, torch.float64), 2, 40)),
        ("end rank 4, above the LoRAs' rank 2", (_lab05_merged(g, 4, 8, 6, 2, torch.float64), 4, 40)),
        ("two copies of one fine-tune: the loss is 0 at once, so the plateau rule doubles the rank at step 17",
         (torch.cat([one, one]), 4, 40)),
        ("float32, 4 LoRAs of rank 2 on a 12x10 layer, 30 iterations", (_lab05_merged(g, 4, 12, 10, 2), 2, 30)),
        ("a single iteration", (_lab05_merged(g, 3, 8, 6, 1, torch.float64), 2, 1)),
    ]


def _detune_wrong(merged, end_rank, n_iters, *, step_offset=1, loss_first=False, rank_after=False):
    """``detune`` with one typical slip: the scheduler's step number, the loss before the W-step, or the rank
    recorded after the scheduler update."""
    losses, ranks = [], []
    W_star, state = merged.mean(0), (1, math.inf, 0)
    for it in range(n_iters):
        rank = state[0]
        M = spectral_detuning.m_step(merged, W_star, rank)
        loss_old = (merged - W_star - M).square().mean().item()
        W_star = spectral_detuning.w_step(merged, M)
        loss = loss_old if loss_first else (merged - W_star - M).square().mean().item()
        state = spectral_detuning.scheduler_rule(*state, loss, it + step_offset, n_iters, end_rank)
        losses.append(loss)
        ranks.append(state[0] if rank_after else rank)
    return W_star, torch.tensor(losses, dtype=torch.float64), torch.tensor(ranks, dtype=torch.int64)


def _detune_no_scheduler(merged, end_rank, n_iters):
    def full_rank_m_step(merged, W_star, rank):
        return spectral_detuning.m_step(merged, W_star, end_rank)

    W_star, loss, _ = detune(merged, end_rank, n_iters, m_step=full_rank_m_step)
    return W_star, loss, torch.full((n_iters,), end_rank, dtype=torch.int64)


register("05.w_step", spectral_detuning.w_step, _w_step_cases, title="The W-step: the shared weights",
         difficulty=1, importance=5, minutes=5,
         hints=("Given the low-rank parts M, the best shared W* is the average of what is left of each fine-tune.",
                "merged and M are [n, d_out, d_in]; W* is [d_out, d_in]."),
         mistakes=(("averaged the merged weights and ignored M: that is the Mean-LoRA baseline", _w_step_mean_lora),))
register("05.m_step", spectral_detuning.m_step, _m_step_cases, title="The M-step: rank-r parts", difficulty=2,
         importance=5, minutes=10,
         hints=("The M-step explains each fine-tune's difference from the current W* by its best rank-r "
                "approximation.",
                "merged is [n, d_out, d_in] and W_star is [d_out, d_in]; M is [n, d_out, d_in], each slice of rank "
                "at most r.",
                "A truncated SVD keeps the top r singular triplets; torch.linalg.svd works on a batch."),
         mistakes=(("approximated the merged weights themselves; the M-step approximates merged minus W*",
                    _m_step_of_merged),), rtol=1e-4, atol=1e-5)
register("05.scheduler_rule", spectral_detuning.scheduler_rule, _scheduler_cases, title="The rank scheduler",
         difficulty=3, importance=3, minutes=10,
         hints=("The scheduler starts at rank 1 and doubles the rank when the loss stops improving; in the second "
                "half of the iterations it uses the end rank.",
                "It returns (rank, best_loss, num_bad_steps). An improvement resets the bad-step count; more than 15 "
                "bad steps double the rank and reset the count.",
                "Check the second-half condition first; the doubled rank never exceeds end_rank."),
         mistakes=(("doubled the rank past end_rank; the doubled rank is capped at end_rank", _uncapped),))
register("05.detune", detune, _detune_cases, title="Spectral DeTuning of one layer, end to end", difficulty=4,
         importance=5, minutes=20,
         hints=("Start W* at the Mean-LoRA and the scheduler at rank 1, best loss +inf, no bad steps. Then every "
                "iteration: an M-step at the scheduler's rank, a W-step, the loss, one scheduler step.",
                "The loss is the mean square of W'_i - W* - M_i over all LoRAs and entries, with the NEW W* (after "
                "the W-step) and the M of this iteration, as a Python float. The scheduler state is the tuple "
                "(rank, best, num_bad_steps) that scheduler_rule takes and returns.",
                "scheduler_rule wants the 1-based step number: iteration it is step it + 1. Record the rank the "
                "iteration used, before you update the scheduler."),
         mistakes=(("computed the loss before the W-step (old W*); the official loss uses the new W* and this "
                    "iteration's M", partial(_detune_wrong, loss_first=True)),
                   ("gave the scheduler the 0-based iteration number; steps are 1-based (it + 1), so the end rank "
                    "came one step late", partial(_detune_wrong, step_offset=0)),
                   ("recorded the rank after the scheduler update; record the rank the iteration used",
                    partial(_detune_wrong, rank_after=True)),
                   ("used end_rank from the first iteration: the rank starts at 1 and follows the scheduler",
                    _detune_no_scheduler)),
         rtol=1e-4, atol=1e-6)
