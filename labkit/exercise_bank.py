"""The exercises of every lab, as data: id → reference (a labkit function), test cases and a hint (DESIGN §6).

``EXERCISES`` is the bank ``labkit.exercises.check`` reads; each lab adds its exercises below with ``register``.
References are labkit's own functions, so the exercise and the library can never disagree. This module imports
no checker: ``labkit.exercises`` imports it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from labkit.methods import dsire, mother, probegen, probex, spectral_detuning
from labkit.spectra import energy_fraction

__all__ = ["EXERCISES", "Exercise", "hints", "register"]


@dataclass(frozen=True)
class Exercise:
    """One exercise: the reference, its cases (``() -> [(description, args), ...]``), the stub's hint and the
    tolerances ``check`` compares with."""

    id: str
    reference: Callable
    cases: Callable[[], list[tuple[str, tuple]]]
    hint: str
    rtol: float = 1e-5
    atol: float = 1e-6


EXERCISES: dict[str, Exercise] = {}


def register(exercise_id: str, reference: Callable, cases: Callable[[], list[tuple[str, tuple]]], hint: str,
             **tolerances) -> Exercise:
    """Add one exercise to ``EXERCISES`` (an id may be added once)."""
    if exercise_id in EXERCISES:
        raise ValueError(f"exercise {exercise_id!r} is registered twice")
    ex = Exercise(exercise_id, reference, cases, hint, **tolerances)
    EXERCISES[exercise_id] = ex
    return ex


def hints() -> dict[str, str]:
    """Exercise id → the hint the student copy's stub shows."""
    return {ex_id: ex.hint for ex_id, ex in EXERCISES.items()}


# ------------------------------------------------------------------------------------------ lab 00: spectra


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


# ----------------------------------------------------------------------------------------- lab 02: ProbeX


def _lab02_probe_cases():
    g = torch.Generator().manual_seed(2)
    return [
        ("4 layers 6×5, 3 probes, projection to 2", (torch.randn(4, 6, 5, generator=g), torch.randn(5, 3, generator=g),
                                                   torch.randn(2, 6, generator=g))),
        ("one wide layer 3×8, 4 probes, projection to 5", (torch.randn(1, 3, 8, generator=g),
                                                         torch.randn(8, 4, generator=g), torch.randn(5, 3, generator=g))),
        ("all-negative responses are cut to 0 by the ReLU", (torch.ones(2, 3, 3), torch.ones(3, 2), -torch.ones(4, 3))),
        ("float64", (torch.randn(2, 4, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g,
                                                                                         dtype=torch.float64),
                     torch.randn(3, 4, generator=g, dtype=torch.float64))),
    ]


def _lab02_cosine_cases():
    g = torch.Generator().manual_seed(3)
    e = torch.randn(5, 4, generator=g)
    return [
        ("5 models, 3 texts, dim 4", (e, torch.randn(3, 4, generator=g))),
        ("scale does not matter: 10·e gives the same logits", (10 * e, torch.randn(2, 4, generator=g))),
        ("a text equal to a model's embedding scores 1", (e[:2], e[1:2].clone())),
        ("opposite vectors score −1", (torch.tensor([[1.0, 2.0]]), torch.tensor([[-2.0, -4.0]]))),
    ]


def _lab02_metric_cases():
    return [
        ("all right", (torch.tensor([[3.0, -2.0], [-1.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))),
        ("all wrong", (torch.tensor([[3.0, -2.0]]), torch.tensor([[0.0, 1.0]]))),
        ("3 of 4 decisions right (threshold at logit 0, i.e. sigmoid 0.5)",
         (torch.tensor([[0.5, -0.5], [2.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))),
        ("logit exactly 0 means sigmoid 0.5, which is not > 0.5: predicted off",
         (torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]))),
        ("a 3×4 case", (torch.tensor([[1.0, -1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, -1]]),
                        torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]))),
    ]


register("02.probe_responses", probex.probe_responses, _lab02_probe_cases,
         hint="R = X @ U is [B, d_H, r_U]; transpose to [B, r_U, d_H]; project with V ([r_V, d_H]) as R @ V.T; "
              "then torch.relu")
register("02.cosine_logits", probex.cosine_logits, _lab02_cosine_cases,
         hint="F.normalize(e, dim=-1) @ F.normalize(t, dim=-1).T — no temperature, values in [−1, 1]")
register("02.binary_accuracy", probex.binary_accuracy, _lab02_metric_cases,
         hint="((logits > 0).float() == Y).float().mean() as a Python float (sigmoid(z) > 0.5 ⇔ z > 0)")


# ------------------------------------------------------------------------------------------- lab 03: ProbeGen


def _lab03_deep_linear_cases():
    g = torch.Generator().manual_seed(3)

    def layers(*dims):
        return ([torch.randn(dims[i + 1], dims[i], generator=g) for i in range(len(dims) - 1)],
                [torch.randn(b, generator=g) for b in dims[1:]])

    W, b = layers(32, 32, 2)
    return [
        ("the paper's INR generator: 128 latents, 32 → 32 → 2", (torch.randn(128, 32, generator=g), W, b)),
        ("one layer is a plain affine map", (torch.randn(5, 4, generator=g), *layers(4, 3))),
        ("four layers, widths change", (torch.randn(7, 3, generator=g), *layers(3, 8, 5, 6, 2))),
        ("no layers: the latents themselves (vanilla probing)", (torch.randn(6, 2, generator=g), [], [])),
        ("collapsed: the same as one affine map", (torch.randn(9, 32, generator=g),
                                                   *[[m] for m in probegen.collapse_linear(W, b)])),
    ]


def _lab03_features_cases():
    g = torch.Generator().manual_seed(4)

    def sirens(B, h=32):
        scale = 1.0 / h
        return (torch.randn(B, h, 2, generator=g) * 0.5, torch.randn(B, h, generator=g) * 0.1,
                torch.randn(B, h, h, generator=g) * scale, torch.randn(B, h, generator=g) * 0.1,
                torch.randn(B, 1, h, generator=g) * scale, torch.randn(B, 1, generator=g) * 0.1)

    return [
        ("4 SIRENs on 16 uniform probes", (*sirens(4), probegen.uniform_coordinates(16, g), 30.0)),
        ("one SIREN, one probe", (*sirens(1), torch.zeros(1, 2), 30.0)),
        ("8 narrow SIRENs (h = 5), w0 = 1", (*sirens(8, 5), probegen.uniform_coordinates(10, g), 1.0)),
        ("probes outside the image square", (*sirens(3), 3 * probegen.uniform_coordinates(6, g), 30.0)),
    ]


def _lab03_tau_cases():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(30, generator=g, dtype=torch.float64)
    return [
        ("the same order: τ = 1", (torch.tensor([0.1, 0.4, 0.3, 0.9]), torch.tensor([1.0, 4.0, 3.0, 9.0]))),
        ("reversed: τ = −1", (torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))),
        ("noisy predictions of 30 accuracies", (x + 0.2 * torch.rand(30, generator=g, dtype=torch.float64), x)),
        ("ties in both vectors (τ-b)", (torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]), torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0]))),
        ("two networks", (torch.tensor([0.2, 0.5]), torch.tensor([0.9, 0.1]))),
    ]


register("03.deep_linear", probegen.deep_linear, _lab03_deep_linear_cases,
         hint="h = Z; for W, b in zip(weights, biases): h = h @ W.T + b  — and no activation in between; return h",
         rtol=1e-4, atol=1e-5)
register("03.probe_features", probegen.siren_probe_responses, _lab03_features_cases,
         hint="h = sin(w0·(coords @ W0.transpose(1, 2) + b0[:, None])); the same with W1, b1; then "
              "(h @ W2.transpose(1, 2) + b2[:, None]).squeeze(-1) + 0.5  → [B, T]", rtol=1e-4, atol=1e-5)
register("03.kendall_tau", probegen.kendall_tau, _lab03_tau_cases,
         hint="over pairs i < j (torch.triu_indices): s = sign(p_i − p_j)·sign(t_i − t_j); "
              "τ = s.sum() / sqrt((N − ties in pred)·(N − ties in true)), N = number of pairs")


# ----------------------------------------------------------------------------------------------- lab 04: DSiRe


def _lab04_spectra_cases():
    g = torch.Generator().manual_seed(4)
    U = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(7, 3, generator=g, dtype=torch.float64)).Q
    known_A = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)[:, None] * V.T  # σ(A) = 3, 2, 1
    known_B = U * torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)  # σ(B) = 0.5, 0.2, 0.1
    return [
        ("one layer of 4 LoRAs, r=3, 6 → 9", (torch.randn(4, 3, 6, generator=g), torch.randn(4, 9, 3, generator=g))),
        ("known spectra: σ(BA) = 1.5, 0.4, 0.1", (known_A[None], known_B[None])),
        ("wide input, r=8 (the zoo's shapes, 64 → 256)",
         (torch.randn(2, 8, 64, generator=g) / 8, torch.randn(2, 256, 8, generator=g) * 0.01)),
        ("B = 0 (a LoRA before training): σ(B) = σ(BA) = 0",
         (torch.randn(3, 2, 5, generator=g, dtype=torch.float64), torch.zeros(3, 5, 2, dtype=torch.float64))),
        ("layers × models batch [2, 3, ...]", (torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64),
                                               torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64))),
    ]


def _lab04_vote_cases():
    g = torch.Generator().manual_seed(40)
    return [
        ("a clear majority", (torch.tensor([[10, 20, 20, 20, 10]]),)),
        ("a 2–2 tie goes to the label seen first", (torch.tensor([[1, 2, 2, 1], [2, 1, 1, 2]]),)),
        ("all voters differ: the first voter wins", (torch.tensor([[30, 1, 50]]),)),
        ("one voter", (torch.tensor([[6], [1]]),)),
        ("24 voters, 50 models, sizes 1..6", (torch.randint(1, 7, (50, 24), generator=g),)),
    ]


def _lab04_score_cases():
    return [
        ("all right", ([1, 10, 20], [1, 10, 20])),
        ("medium range, two mistakes", ([1, 10, 20, 50], [1, 20, 20, 40])),
        ("low range, off by one", ([1, 2, 3, 4, 5, 6], [2, 2, 3, 3, 5, 6])),
        ("tensors in", (torch.tensor([1, 30, 40]), torch.tensor([10, 30, 50]))),
    ]


register("04.lora_spectra", dsire.lora_spectra, _lab04_spectra_cases,
         hint="σ(A) = torch.linalg.svdvals(A), σ(B) = torch.linalg.svdvals(B); for σ(BA) either svdvals(B @ A)[..., :r] "
              "or, without the product, R_B = torch.linalg.qr(B).R, R_A = torch.linalg.qr(A.mT).R, "
              "svdvals(R_B @ R_A.mT); return the three as a tuple", rtol=1e-4, atol=1e-6)
register("04.majority_vote", dsire.majority_vote, _lab04_vote_cases,
         hint="for each row: collections.Counter(row.tolist()).most_common(1)[0][0] (Counter keeps first-seen order "
              "on ties); return torch.tensor of the winners")
register("04.scores", dsire.scores, _lab04_score_cases,
         hint="accuracy = 100·mean(y == ŷ); mae = mean |y − ŷ|; mape = 100·mean(|y − ŷ| / |y|); return "
              "{'accuracy': …, 'mae': …, 'mape': …} as floats")


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
