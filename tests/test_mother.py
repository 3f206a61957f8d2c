"""MoTHer (lab 01): distances, kurtosis direction, Edmonds, clustering and metrics on trees with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from labkit.methods import mother as mo

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------
# faithful loop references (one pair at a time, as the official scripts do)


def loop_rank_distance(layers: dict[str, torch.Tensor]) -> np.ndarray:
    n = next(iter(layers.values())).shape[0]
    D = np.zeros((n, n))
    for u in range(n):
        for v in range(n):
            if u != v:
                D[u, v] = sum(np.linalg.matrix_rank((W[u] - W[v]).numpy()) for W in layers.values())
    return D


def loop_mean_abs_distance(layers: dict[str, torch.Tensor]) -> np.ndarray:
    n = next(iter(layers.values())).shape[0]
    D = np.zeros((n, n))
    for u, v in itertools.combinations(range(n), 2):
        D[u, v] = D[v, u] = sum(np.abs((W[u] - W[v]).numpy()).mean() for W in layers.values())
    return D


def loop_ft_distance(layers: dict[str, torch.Tensor], variant: str = "normalised") -> np.ndarray:
    """The official FT distance: per layer, min/max over all pairwise differences (i<j), then per pair
    (in index order) the normalised signed maximum, copied to both directions, max over layers."""
    n = next(iter(layers.values())).shape[0]
    pairs = list(itertools.combinations(range(n), 2))
    D = np.zeros((n, n))
    for W in layers.values():
        W = W.double().numpy()
        if variant == "normalised":
            lo = min((W[i] - W[j]).min() for i, j in pairs)
            hi = max((W[i] - W[j]).max() for i, j in pairs)
        for i, j in pairs:
            if variant == "normalised":
                d = ((W[i] - W[j]).max() - lo) / (hi - lo)
            else:
                d = np.abs(W[i] - W[j]).max()
            D[i, j] = D[j, i] = max(D[i, j], d)
    return D


def brute_force_mdst(M: np.ndarray) -> tuple[float, np.ndarray]:
    """Cheapest spanning arborescence by enumerating every root and parent assignment (tiny n only)."""
    n = M.shape[0]
    best, best_parents = np.inf, None
    for root in range(n):
        others = [v for v in range(n) if v != root]
        for choice in itertools.product(range(n), repeat=len(others)):
            parents = np.full(n, -1)
            if any(p == v for p, v in zip(choice, others)):
                continue
            parents[others] = choice
            ok = True
            for v in others:  # every node must reach the root without a cycle
                seen, x = set(), v
                while x != root and x not in seen:
                    seen.add(x)
                    x = parents[x]
                ok &= x == root
            if ok:
                cost = sum(M[parents[v], v] for v in others)
                if cost < best - 1e-12:
                    best, best_parents = cost, parents
    return best, best_parents


# ---------------------------------------------------------------------------------------------------------------
# synthetic model forests with known edges


def laplace(g: torch.Generator, shape, scale: float = 0.1) -> torch.Tensor:
    """Heavy-tailed (excess kurtosis 3) weights, like a trained layer's."""
    u = torch.rand(*shape, generator=g, dtype=torch.float64) - 0.5
    return -scale * torch.sign(u) * torch.log1p(-2 * u.abs())


def make_forest(regime: str, *, n_trees: int = 3, n_children: int = 3, n_grand: int = 2, d: int = 48,
                n_layers: int = 2, ranks=(4,), sigma: float = 0.04, seed: int = 0):
    """Roots are heavy-tailed random matrices; each child adds a rank-r product B·A ("lora") or dense small
    Gaussian noise ("ft") to its parent. Returns layers {name: [n, d, d]} (float32), edges, tree ids."""
    g = torch.Generator().manual_seed(seed)

    def update():
        if regime == "lora":
            r = ranks[int(torch.randint(len(ranks), (1,), generator=g))]
            B = torch.randn(n_layers, d, r, generator=g, dtype=torch.float64)
            A = torch.randn(n_layers, r, d, generator=g, dtype=torch.float64)
            return 0.05 * B @ A / r**0.5
        return sigma * torch.randn(n_layers, d, d, generator=g, dtype=torch.float64)

    models, edges, tree = [], [], []
    for t in range(n_trees):
        r = len(models)
        models.append(laplace(g, (n_layers, d, d)))
        tree.append(t)
        for _ in range(n_children):
            c = len(models)
            models.append(models[r] + update())
            tree.append(t)
            edges.append((r, c))
            for _ in range(n_grand):
                edges.append((c, len(models)))
                models.append(models[c] + update())
                tree.append(t)
    W = torch.stack(models).float()
    return {f"layer.{k}.weight": W[:, k].contiguous() for k in range(n_layers)}, edges, np.array(tree)


# ---------------------------------------------------------------------------------------------------------------
# Edmonds


def test_edmonds_on_a_hand_graph_must_break_a_cycle():
    # Cheapest incoming edges form the cycle 1 ⇄ 2; Edmonds must enter it from 0 through the cheaper 0 → 2.
    big = 100.0
    M = np.full((4, 4), big)
    M[0, 1], M[0, 2] = 5.0, 3.0
    M[1, 2], M[2, 1] = 1.0, 1.0
    M[2, 3], M[1, 3] = 2.0, 4.0
    parents = mo.minimum_directed_spanning_tree(torch.tensor(M))
    assert parents.tolist() == [-1, 2, 0, 2]
    assert mo.edges_from_parents(parents) == [(2, 1), (0, 2), (2, 3)]
    cost, ref = brute_force_mdst(M)
    assert cost == pytest.approx(6.0) and ref.tolist() == parents.tolist()


def test_edmonds_matches_brute_force_on_random_graphs():
    rng = np.random.default_rng(0)
    for _ in range(15):
        M = rng.uniform(0, 10, (4, 4))
        parents = mo.minimum_directed_spanning_tree(torch.tensor(M))
        cost = sum(M[p, c] for p, c in mo.edges_from_parents(parents))
        assert (parents < 0).sum() == 1
        assert cost == pytest.approx(brute_force_mdst(M)[0])


# ---------------------------------------------------------------------------------------------------------------
# distances


def test_rank_distance_counts_lora_hops():
    # root → a (rank 2) → b (rank 3), and root → c (rank 4); two adapted layers, so every distance doubles.
    g = torch.Generator().manual_seed(1)
    d = 24

    def lora(r):
        return torch.randn(2, d, r, generator=g) @ torch.randn(2, r, d, generator=g) * 0.1

    root = torch.randn(2, d, d, generator=g)
    a = root + lora(2)
    b = a + lora(3)
    c = root + lora(4)
    W = torch.stack([root, a, b, c])
    layers = {"q": W[:, 0], "v": W[:, 1]}
    D = mo.rank_distance(layers)
    expected = 2 * torch.tensor([[0, 2, 5, 4], [2, 0, 3, 6], [5, 3, 0, 9], [4, 6, 9, 0]], dtype=torch.float64)
    assert torch.equal(D, expected)
    assert torch.equal(mo.rank_distance(layers, max_elements=1), expected)  # one pair per chunk
    assert np.array_equal(D.numpy(), loop_rank_distance(layers))


@pytest.mark.parametrize("regime", ["lora", "ft"])
def test_batched_distances_equal_the_loop_reference(regime):
    layers, _, _ = make_forest(regime, n_trees=2, n_children=2, n_grand=1, d=16, ranks=(2, 3))
    for chunk in (1, 7, 1 << 24):
        assert np.array_equal(mo.rank_distance(layers, max_elements=chunk * 256).numpy(),
                              loop_rank_distance(layers))
        np.testing.assert_allclose(mo.mean_abs_distance(layers, max_elements=chunk * 256).numpy(),
                                   loop_mean_abs_distance(layers), rtol=1e-6)
        for variant in ("normalised", "max_abs"):
            np.testing.assert_allclose(mo.ft_distance(layers, variant=variant, max_elements=chunk * 256).numpy(),
                                       loop_ft_distance(layers, variant), rtol=1e-6, atol=1e-12)


def test_ft_distance_is_the_signed_maximum_in_index_order():
    # Two models, one layer: W0 − W1 has entries {+1, −3}. The official distance is the normalised signed
    # maximum of W0 − W1 (index order), i.e. (1 − (−3)) / (1 − (−3)) = 1, not anything about |−3|.
    W = torch.tensor([[[1.0, -3.0]], [[0.0, 0.0]]])
    D = mo.ft_distance({"w": W})
    assert D[0, 1] == D[1, 0] == 1.0 and D[0, 0] == 0.0
    assert mo.ft_distance({"w": W}, variant="max_abs")[0, 1] == 3.0
    # Three models: the normalisation is shared by all pairs of the layer.
    W = torch.tensor([[[0.0]], [[1.0]], [[3.0]]])  # differences W_i − W_j (i<j): −1, −3, −2
    D = mo.ft_distance({"w": W})
    assert D[0, 1].item() == pytest.approx(1.0) and D[0, 2].item() == 0.0 and D[1, 2].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# kurtosis direction


def test_kurtosis_matches_scipy_fisher_biased_summed_over_layers():
    layers, _, _ = make_forest("ft", n_trees=1, n_children=2, n_grand=0, d=20)
    got = mo.kurtosis(layers)
    want = [sum(scipy.stats.kurtosis(W[i].double().numpy().ravel(), fisher=True, bias=True)
                for W in layers.values()) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_fine_tuning_noise_lowers_kurtosis_and_the_direction_matrix_penalises_the_reverse_edge():
    g = torch.Generator().manual_seed(0)
    parent = laplace(g, (64, 64))  # excess kurtosis ≈ 3
    child = parent + 0.1 * torch.randn(64, 64, generator=g, dtype=torch.float64)  # Gaussian noise: kurtosis ↓
    kurt = mo.kurtosis({"w": torch.stack([parent, child])})
    assert kurt[0] > 2.0 and kurt[1] < kurt[0] - 0.5
    K = mo.direction_matrix(kurt)
    assert K.tolist() == [[0.0, 0.0], [1.0, 0.0]]  # parent → child is free, child → parent is penalised
    assert mo.direction_matrix(kurt, reverse=True).tolist() == [[0.0, 1.0], [0.0, 0.0]]
    M = mo.edge_weights(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), K, lam=0.3)
    assert M[0, 1] == 2.0 and M[1, 0] == pytest.approx(2.0 + 0.3 * 1.0) and torch.isinf(M.diagonal()).all()
    assert mo.recover_tree(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), kurt).tolist() == [-1, 0]


# ---------------------------------------------------------------------------------------------------------------
# the whole pipeline


@pytest.mark.parametrize(("regime", "ranks"), [("lora", (4,)), ("lora", (2, 4, 8)), ("ft", (4,))])
def test_mother_recovers_a_synthetic_forest(regime, ranks):
    layers, true_edges, tree = make_forest(regime, ranks=ranks, seed=3)
    res = mo.mother(layers, n_trees=3, regime=regime)
    assert mo.clustering_accuracy(res.clusters, tree) == 1.0
    assert mo.edge_accuracy(res.edges, true_edges) == 1.0
    assert sorted(res.roots) == [0, 10, 20]
    assert res.parents.tolist()[:5] == [-1, 0, 1, 1, 0]  # root, child, its 2 children, child
    # the distance alone places every edge (undirected); the kurtosis term is what orients them
    sweep = mo.lambda_sweep(res, true_edges, lambdas=(0.0, 0.3))
    assert sweep[0.3] == 1.0
    undirected = mo.lambda_sweep(res, true_edges + [(c, p) for p, c in true_edges], lambdas=(0.0,))
    assert undirected[0.0] == pytest.approx(0.5)  # every true edge found one way or the other


def test_ft_max_abs_variant_also_recovers_the_forest():
    layers, true_edges, tree = make_forest("ft", seed=5)
    res = mo.mother(layers, n_trees=3, regime="ft", ft_variant="max_abs")
    assert mo.clustering_accuracy(res.clusters, tree) == 1.0
    assert mo.edge_accuracy(res.edges, true_edges) == 1.0


def test_reverse_direction_for_continued_pretraining():
    # A chain in which each step stretches the tails (w + 0.05·w³, plus a little noise), so kurtosis RISES
    # along the edges: the default orientation gets every edge backwards, reverse=True recovers the chain.
    g = torch.Generator().manual_seed(0)
    chain = [torch.randn(40, 40, generator=g, dtype=torch.float64)]
    for _ in range(3):
        chain.append(chain[-1] + 0.05 * chain[-1] ** 3 + 0.01 * torch.randn(40, 40, generator=g, dtype=torch.float64))
    layers = {"w": torch.stack(chain)}
    assert (mo.kurtosis(layers).diff() > 0).all()
    true_edges = [(0, 1), (1, 2), (2, 3)]
    assert mo.edge_accuracy(mo.mother(layers, regime="ft", reverse=True).edges, true_edges) == 1.0
    assert mo.edge_accuracy(mo.mother(layers, regime="ft").edges, true_edges) == 0.0


def test_cross_tree_ranks_are_full_and_clustering_separates_trees():
    layers, _, tree = make_forest("lora", n_children=2, n_grand=1, d=32, seed=1)
    D = mo.rank_distance(layers)
    same = tree[:, None] == tree[None, :]
    assert (D[torch.as_tensor(~same)] == 2 * 32).all()  # unrelated roots: full rank in each of 2 layers
    assert (D[torch.as_tensor(same)] <= 2 * 4 * 4).all()  # at most 4 hops of rank 4 inside a tree
    assert mo.clustering_accuracy(mo.cluster_trees(D, 3), tree) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# metrics and inputs


def test_clustering_accuracy_uses_the_best_permutation():
    true = [0, 0, 0, 1, 1, 2, 2]
    assert mo.clustering_accuracy([2, 2, 2, 0, 0, 1, 1], true) == 1.0
    assert mo.clustering_accuracy([2, 2, 0, 0, 0, 1, 1], true) == pytest.approx(6 / 7)
    assert mo.clustering_accuracy([0] * 7, true) == pytest.approx(3 / 7)


def test_edge_accuracy_is_directed():
    true = [(0, 1), (1, 2), (0, 3)]
    assert mo.edge_accuracy([(0, 1), (1, 2), (0, 3)], true) == 1.0
    assert mo.edge_accuracy([(1, 0), (1, 2), (0, 3)], true) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        mo.edge_accuracy([(0, 1)], [])


def test_stack_layers_picks_shared_square_weights():
    g = torch.Generator().manual_seed(0)
    sd = [{"attn.value.weight": torch.randn(4, 4, generator=g), "attn.output.dense.weight": torch.randn(4, 4),
           "mlp.weight": torch.randn(8, 4), "bias": torch.randn(4)} for _ in range(3)]
    layers = mo.stack_layers(sd)
    assert list(layers) == ["attn.value.weight", "attn.output.dense.weight"]
    assert layers["attn.value.weight"].shape == (3, 4, 4)
    assert list(mo.stack_layers(sd, contains="value")) == ["attn.value.weight"]
    assert list(mo.stack_layers(sd, square_only=False)) == ["attn.value.weight", "attn.output.dense.weight",
                                                            "mlp.weight"]
    sd[1]["attn.value.weight"] = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"one shape, got \[4, 4\] and \[4, 5\] for 'attn.value.weight'"):
        mo.stack_layers(sd, ["attn.value.weight"])


def test_bad_inputs_raise_clear_errors():
    W = torch.randn(3, 4, 4)
    with pytest.raises(ValueError, match="at least 2 models"):
        mo.mother({"w": W[:1]})
    with pytest.raises(ValueError, match="at least 2 models"):
        mo.stack_layers([{"w": W[0]}])
    with pytest.raises(ValueError, match="holds 2 models but an earlier layer holds 3"):
        mo.rank_distance({"a": W, "b": W[:2]})
    with pytest.raises(ValueError, match=r"expected \[n_models, d_out, d_in\]"):
        mo.kurtosis({"w": W[0]})
    bad = W.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mo.mother({"w": bad})
    with pytest.raises(ValueError, match="λ"):
        mo.mother({"w": W}, lam=-0.1)
    with pytest.raises(ValueError, match="λ"):
        mo.edge_weights(torch.zeros(3, 3), torch.zeros(3, 3), lam=-1)
    with pytest.raises(ValueError, match="n_trees"):
        mo.mother({"w": W}, n_trees=4)
    with pytest.raises(ValueError, match="regime"):
        mo.mother({"w": W}, regime="adapter")
    with pytest.raises(ValueError, match="kurtosis_layers holds 2 models"):
        mo.mother({"w": W}, kurtosis_layers={"w": W[:2]})
    with pytest.raises(TypeError, match="one tensor"):
        mo.rank_distance(W)
