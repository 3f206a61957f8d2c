"""Lab 01 exercises: model trees (MoTHer) (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import mother


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


def _first_layer_only(layers, **_):
    return mother.rank_distance(dict([next(iter(layers.items()))]))


def _direction_transposed(kurt, **_):
    return mother.direction_matrix(kurt).T


def _undirected_edges(pred_edges, true_edges):
    true = {frozenset(map(int, e)) for e in true_edges}
    return sum(frozenset(map(int, e)) in true for e in pred_edges) / len(true)


register("01.rank_distance", mother.rank_distance, _rank_cases, title="Rank distance between models",
         difficulty=2, importance=4, minutes=10,
         hints=("Two models one LoRA apart differ by a low-rank matrix in every adapted layer; MoTHer's distance adds "
                "those ranks up over all layers.",
                "layers maps a name to a [n, d_out, d_in] stack; the result D is [n, n], symmetric, zero on the "
                "diagonal, float64.",
                "torch.linalg.matrix_rank works on one matrix or on a batch; loop over the pairs, or broadcast the "
                "stack against itself to get all differences at once."),
         mistakes=(("used only the first layer; the distance sums the ranks over every layer", _first_layer_only),))
register("01.direction_matrix", mother.direction_matrix, _direction_cases, title="Direction penalty from kurtosis",
         difficulty=1, importance=4, minutes=5,
         hints=("Fine-tuning tends to lower weight kurtosis, so an edge whose child is MORE kurtotic than its parent "
                "is suspicious and gets a penalty.",
                "kurt is [n]; the result is [n, n] float64 where entry (i, j) is the penalty of the edge parent i -> "
                "child j: 1.0 or 0.0.",
                "Compare every pair at once by broadcasting a row view of kurt against a column view."),
         mistakes=(("transposed: entry (i, j) is the edge parent i -> child j, and the penalty falls on edges whose "
                    "child is more kurtotic", _direction_transposed),))
register("01.edge_accuracy", mother.edge_accuracy, _edge_cases, title="Directed edge accuracy", difficulty=1,
         importance=2, minutes=5,
         hints=("A predicted edge counts only if the same parent -> child pair, in the same direction, is in the true "
                "tree.",
                "Turn both lists into sets of (parent, child) tuples of ints; the score is a float in [0, 1], out of "
                "the number of true edges."),
         mistakes=(("counted a reversed edge as right; MoTHer is scored on directed edges", _undirected_edges),))
