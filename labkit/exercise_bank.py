"""The exercises of every lab: id → reference (a labkit function), test cases and a hint (DESIGN §6)."""

from __future__ import annotations

import torch

from labkit.exercises import register
from labkit.methods import mother, spectral_detuning
from labkit.spectra import energy_fraction


def _energy_cases():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 1, generator=g), torch.randn(1, 4, generator=g)
    return [
        ("random 8×5 matrix, k=2", (torch.randn(8, 5, generator=g), 2)),
        ("wide 5×8 matrix, k=3", (torch.randn(5, 8, generator=g), 3)),
        ("rank-1 matrix, k=1 (all energy in one direction)", (u @ v, 1)),
        ("k=0 keeps nothing", (torch.randn(4, 4, generator=g), 0)),
        ("k larger than the rank keeps everything", (torch.randn(3, 7, generator=g), 5)),
        ("float64 input", (torch.randn(6, 6, generator=g, dtype=torch.float64), 2)),
    ]


register("00.energy", energy_fraction, _energy_cases,
         hint="torch.linalg.svdvals(W) gives σ largest first; return (σ[:k]²).sum() / (σ²).sum()")


# ----------------------------------------------------------------------------------------- lab 01: model trees


def _rank_cases():
    g = torch.Generator().manual_seed(1)

    def low_rank(d_out, d_in, r, dtype=torch.float64):
        return torch.randn(d_out, r, generator=g, dtype=dtype) @ torch.randn(r, d_in, generator=g, dtype=dtype)

    W = torch.randn(6, 6, generator=g, dtype=torch.float64)
    child = W + low_rank(6, 6, 1)
    grandchild = child + low_rank(6, 6, 2)
    V = torch.randn(5, 5, generator=g, dtype=torch.float64)
    return [
        ("root → LoRA child (rank 1) → grandchild (rank 2): distances 1, 2 and 3",
         ({"value": torch.stack([W, child, grandchild])},)),
        ("two layers: the ranks add up",
         ({"q": torch.stack([W, child]), "v": torch.stack([V, V + low_rank(5, 5, 3)])},)),
        ("identical models are at distance 0", ({"w": torch.stack([V, V.clone(), V + low_rank(5, 5, 2)])},)),
        ("a full-rank difference", ({"w": torch.stack([W, W + torch.eye(6, dtype=torch.float64)])},)),
        ("float32 weights", ({"w": torch.stack([W.float(), (W + low_rank(6, 6, 2)).float()])},)),
    ]


def _direction_cases():
    return [
        ("κ falls along a chain: no penalty on 0 → 1 → 2", (torch.tensor([3.0, 2.0, 1.0]),)),
        ("κ rises", (torch.tensor([-1.0, 0.5, 2.0, 0.0]),)),
        ("ties are not penalised", (torch.tensor([1.0, 1.0, 0.0]),)),
        ("two models", (torch.tensor([0.2, -0.3], dtype=torch.float64),)),
    ]


def _edge_cases():
    return [
        ("all edges right", ([(0, 1), (0, 2), (1, 3)], [(0, 1), (0, 2), (1, 3)])),
        ("a reversed edge does not count", ([(1, 0), (0, 2), (1, 3)], [(0, 1), (0, 2), (1, 3)])),
        ("order of the edges does not matter", ([(1, 3), (0, 2), (0, 1)], [(0, 1), (0, 2), (1, 3)])),
        ("nothing right", ([(2, 1), (3, 2)], [(0, 1), (1, 2)])),
        ("edges as lists", ([[0, 1], [2, 3]], [(0, 1), (1, 2), (2, 3), (0, 4)])),
    ]


register("01.rank_distance", mother.rank_distance, _rank_cases,
         hint="for every pair (u, v) add torch.linalg.matrix_rank(W[u] − W[v]) over the layers; D is [n, n], "
              "symmetric, zero on the diagonal, float64")
register("01.direction_matrix", mother.direction_matrix, _direction_cases,
         hint="K[i, j] = 1.0 when κ[j] > κ[i] (the child i → j would be more kurtotic than its parent), else 0.0; "
              "(kurt[None, :] > kurt[:, None]).double()")
register("01.edge_accuracy", mother.edge_accuracy, _edge_cases,
         hint="turn both lists into sets of (parent, child) tuples; return |predicted ∩ true| / |true| as a float")


def hints() -> dict[str, str]:
    """Exercise id → the hint the student copy's stub shows."""
    from labkit.exercises import EXERCISES

    return {ex_id: ex.hint for ex_id, ex in EXERCISES.items()}


# ----------------------------------------------------------------------------------- lab 05: Spectral DeTuning


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


register("05.m_step", spectral_detuning.m_step, _m_step_cases,
         hint="D = merged − W_star.unsqueeze(0); U, S, Vh = torch.linalg.svd(D, full_matrices=False); "
              "M = (U[..., :rank] * S[..., None, :rank]) @ Vh[..., :rank, :]", rtol=1e-4, atol=1e-5)
register("05.w_step", spectral_detuning.w_step, _w_step_cases,
         hint="W* = mean over the LoRAs (dim 0) of merged − M")
register("05.scheduler_rule", spectral_detuning.scheduler_rule, _scheduler_cases,
         hint="if epoch >= n_iters − n_iters·0.5: return (end_rank, best, num_bad_steps); if loss < best: "
              "return (rank, loss, 0); bad = num_bad_steps + 1; if bad > 15: return (min(2·rank, end_rank), best, 0); "
              "else (rank, best, bad)")
