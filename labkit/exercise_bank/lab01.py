"""Lab 01 exercises: model trees (MoTHer) (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import mother


def build_tree(D: torch.Tensor, K: torch.Tensor, lam: float = mother.LAMBDA) -> list[tuple[int, int]]:
    """MoTHer's tree from ``D, K: [n, n]``: the (parent, child) edges of the minimum spanning arborescence of
    ``M = D + lam * mean(D) * K`` (edge i -> j costs ``M[i, j]``), sorted. A composition of ``labkit.methods.mother``."""
    parents = mother.minimum_directed_spanning_tree(mother.edge_weights(D, K, lam))
    return sorted(mother.edges_from_parents(parents))


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


def _kurtosis_cases():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    heavy = W.clone()
    heavy[1, 0, :3] = torch.tensor([6.0, -5.0, 7.0], dtype=torch.float64)  # a few outliers: large kurtosis
    uniform = torch.rand(3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1  # kurtosis near -1.2
    return [
        ("one layer, Gaussian-like weights", ({"w": W},)),
        ("a model with a few outlier weights is more kurtotic", ({"w": heavy},)),
        ("weights with a non-zero mean", ({"w": W + 0.7},)),
        ("two layers: the kurtoses add up", ({"a": heavy, "b": uniform},)),
        ("float32 weights", ({"w": (uniform + 0.3).float()},)),
    ]


def _tree_cases():
    def chain_D(steps):  # models on a path; a LoRA step of rank r adds r to the distance
        pos = torch.cumsum(torch.tensor([0.0, *steps], dtype=torch.float64), 0)
        return (pos[:, None] - pos[None, :]).abs()

    def kd(kurt):
        return mother.direction_matrix(torch.tensor(kurt, dtype=torch.float64))

    fan = torch.tensor([[0, 2, 4, 8], [2, 0, 6, 10], [4, 6, 0, 12], [8, 10, 12, 0]], dtype=torch.float64)
    big = torch.tensor([[0, 12, 8, 6], [12, 0, 20, 18], [8, 20, 0, 2], [6, 18, 2, 0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return [
        ("a fan: root 0 and three LoRA children (siblings are two hops apart)",
         (fan, kd([4.0, 1.0, 2.0, 3.0]), 0.3)),
        ("a LoRA chain 0 -> 1 -> 2, kurtosis falling: D alone cannot tell the root, K can",
         (chain_D([2, 4]), kd([3.0, 2.0, 1.0]), 0.3)),
        ("the same chain with kurtosis rising: the tree turns round", (chain_D([2, 4]), kd([1.0, 2.0, 3.0]), 0.3)),
        ("large distances: the penalty is lam * mean(D), not lam", (big, kd([2.0, 3.0, 1.0, 0.0]), 0.3)),
        ("six models, Euclidean distances, lam = 1", (torch.cdist(x, x), kd([5.0, 0.0, 3.0, 1.0, 4.0, 2.0]), 1.0)),
        ("two models", (torch.tensor([[0.0, 3.0], [3.0, 0.0]], dtype=torch.float64), kd([0.0, 1.0]), 0.3)),
    ]


def _first_layer_only(layers, **_):
    return mother.rank_distance(dict([next(iter(layers.items()))]))


def _direction_transposed(kurt, **_):
    return mother.direction_matrix(kurt).T


def _undirected_edges(pred_edges, true_edges):
    true = {frozenset(map(int, e)) for e in true_edges}
    return sum(frozenset(map(int, e)) in true for e in pred_edges) / len(true)


def _kurtosis_not_excess(layers, **_):
    return mother.kurtosis(layers) + 3.0 * len(layers)


def _kurtosis_uncentred(layers):
    total = 0
    for W in layers.values():
        x = W.reshape(W.shape[0], -1).double()
        total = total + (x**4).mean(1) / (x**2).mean(1) ** 2 - 3
    return total


def _kurtosis_unbiased_variance(layers):
    total = 0
    for W in layers.values():
        x = W.reshape(W.shape[0], -1).double()
        total = total + ((x - x.mean(1, keepdim=True)) ** 4).mean(1) / x.var(1) ** 2 - 3
    return total


def _rank_in_float64(layers, **_):
    return mother.rank_distance({k: W.double() for k, W in layers.items()})


def _arborescence_edges(M: torch.Tensor) -> list[tuple[int, int]]:
    M = M.clone()
    M.fill_diagonal_(float("inf"))
    return sorted(mother.edges_from_parents(mother.minimum_directed_spanning_tree(M)))


def _tree_unscaled_penalty(D, K, lam=mother.LAMBDA):
    return _arborescence_edges(D + lam * K)


def _tree_transposed(D, K, lam=mother.LAMBDA):
    return _arborescence_edges((D + lam * D.mean() * K).T)


def _tree_child_first(D, K, lam=mother.LAMBDA):
    return sorted((child, parent) for parent, child in build_tree(D, K, lam))


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
register("01.kurtosis", mother.kurtosis, _kurtosis_cases, title="Weight kurtosis of each model", difficulty=2,
         importance=3, minutes=8,
         hints=("For each model and layer, flatten the weight matrix, centre it, and take the fourth moment over the "
                "squared second moment, minus 3 (excess kurtosis: 0 for Gaussian weights); then add the layers up.",
                "Each W is [n, d_out, d_in]; reshape it to [n, d_out * d_in] and take the means along dim 1, so one "
                "layer gives [n] and the result is [n] float64. Use the biased moments (plain means, no n - 1)."),
         mistakes=(("forgot the -3: that is the plain kurtosis (3 for Gaussian weights); MoTHer uses the excess "
                    "kurtosis", _kurtosis_not_excess),
                   ("did not subtract each model's mean weight before taking the moments", _kurtosis_uncentred),
                   ("used the unbiased variance (torch.var divides by N - 1); the moments here are plain means",
                    _kurtosis_unbiased_variance)))
register("01.rank_distance", mother.rank_distance, _rank_cases, title="Rank distance between models",
         difficulty=2, importance=4, minutes=10,
         hints=("Two models one LoRA apart differ by a low-rank matrix in every adapted layer; MoTHer's distance adds "
                "those ranks up over all layers.",
                "layers maps a name to a [n, d_out, d_in] stack; the result D is [n, n], symmetric, zero on the "
                "diagonal, float64.",
                "torch.linalg.matrix_rank works on one matrix or on a batch; loop over the pairs, or broadcast the "
                "stack against itself to get all differences at once."),
         mistakes=(("used only the first layer; the distance sums the ranks over every layer", _first_layer_only),
                   ("cast the weights to float64 before the rank: the default tolerance then follows float64's "
                    "precision and float32 rounding noise counts as rank", _rank_in_float64)))
register("01.build_tree", build_tree, _tree_cases, title="Build the tree: Edmonds on D + penalty", difficulty=3,
         importance=5, minutes=20,
         hints=("MoTHer's tree is the cheapest set of n - 1 directed edges in which every model but one (the root) has "
                "exactly one parent and nothing forms a cycle: a minimum spanning arborescence. The edge parent i -> "
                "child j costs D[i, j] plus lam * mean(D) * K[i, j], with mean(D) over all n * n entries.",
                "D and K are [n, n]; the cost matrix M is [n, n]. Make a directed graph with the nodes 0..n-1 and the "
                "n * (n - 1) edges i -> j for i != j (no self-loops), each with its cost as a Python float in the "
                "'weight' attribute. Return a sorted list of n - 1 (parent, child) tuples of ints.",
                "networkx: nx.DiGraph(), G.add_edge(u, v, weight=w), nx.minimum_spanning_arborescence(G) (Edmonds); "
                "the result's .edges() are (parent, child) pairs. Row i of M is the parent."),
         mistakes=(("the penalty is lam * mean(D) * K, not lam * K: scaled by the mean distance it means the same "
                    "thing whatever the units of D", _tree_unscaled_penalty),
                   ("built the edge i -> j with the cost M[j, i] (transposed): row i of M is the parent, column j the "
                    "child", _tree_transposed),
                   ("returned (child, parent) pairs: an edge is (parent, child)", _tree_child_first)))
