"""DSiRe (lab 04): spectral features, the 1-NN voters, the majority vote and its tie rule, the split protocol."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from labkit.methods import dsire


def _orthonormal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q  # [n, k]


def _known_lora(s_A, s_B, d_out: int, d_in: int, g):
    """A = diag(s_A) Vᵀ, B = U diag(s_B): σ(A) = s_A, σ(B) = s_B, σ(BA) = sorted(s_A·s_B)."""
    s_A, s_B = torch.as_tensor(s_A, dtype=torch.float64), torch.as_tensor(s_B, dtype=torch.float64)
    r = len(s_A)
    return s_A[:, None] * _orthonormal(d_in, r, g).T, _orthonormal(d_out, r, g) * s_B[None, :]


def test_lora_spectra_equal_the_direct_svd_of_each_matrix_and_of_the_product():
    g = torch.Generator().manual_seed(0)
    for d_out, d_in, r in [(40, 30, 6), (24, 64, 8), (4, 20, 8), (20, 3, 5)]:
        A = torch.randn(3, 2, r, d_in, generator=g, dtype=torch.float64)
        B = torch.randn(3, 2, d_out, r, generator=g, dtype=torch.float64)
        sA, sB, sBA = dsire.lora_spectra(A, B)
        direct = torch.linalg.svdvals(B @ A)[..., :r]  # the out × in product, formed
        k = min(d_out, d_in, r)
        torch.testing.assert_close(sBA[..., :k], direct[..., :k], rtol=1e-10, atol=1e-10)
        assert (sBA[..., k:] == 0).all() and sBA.shape == (3, 2, r)
        torch.testing.assert_close(sA[..., :min(r, d_in)], torch.linalg.svdvals(A)[..., :min(r, d_in)])
        torch.testing.assert_close(sB[..., :min(r, d_out)], torch.linalg.svdvals(B)[..., :min(r, d_out)])
        torch.testing.assert_close(dsire.product_singular_values(A, B), sBA)


def test_lora_spectra_in_float32_match_float64_to_single_precision():
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(5, 16, 320, generator=g) / 18, torch.randn(5, 1280, 16, generator=g) * 1e-2
    s32 = dsire.product_singular_values(A, B)
    s64 = torch.linalg.svdvals(B.double() @ A.double())[:, :16]
    assert s32.dtype == torch.float32
    assert ((s32.double() - s64).abs() / s64).max() < 1e-5


def test_dsire_features_recover_known_spectra_in_the_official_voter_order():
    g = torch.Generator().manual_seed(2)
    shapes = {"inp": (12, 5), "fc1": (12, 12), "fc2": (12, 12), "out": (5, 12)}
    specs = [([3.0, 2.0, 0.5], [1.0, 0.7, 0.2]), ([1.0, 1.0, 1.0], [4.0, 0.1, 0.05])]
    A, B = {}, {}
    for name, (d_out, d_in) in shapes.items():
        pairs = [_known_lora(sa, sb, d_out, d_in, g) for sa, sb in specs]
        A[name], B[name] = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    voters = dsire.dsire_features(A, B, scale=2.0)
    assert list(voters) == ["inp.down", "inp.up", "fc1.down", "fc1.up", "fc2.down", "fc2.up", "out.down", "out.up",
                            "inp", "fc1", "fc2", "out"]
    for name in shapes:
        assert voters[f"{name}.down"].shape == (2, 3)
        for m, (sa, sb) in enumerate(specs):
            torch.testing.assert_close(voters[f"{name}.down"][m], torch.tensor(sa, dtype=torch.float64))
            torch.testing.assert_close(voters[f"{name}.up"][m], torch.tensor(sb, dtype=torch.float64))
            prod = sorted((2.0 * a * b for a, b in zip(sa, sb)), reverse=True)
            torch.testing.assert_close(voters[name][m], torch.tensor(prod, dtype=torch.float64))
    frob = dsire.frobenius_features(A, B)
    assert list(frob) == list(shapes) and frob["fc1"].shape == (2, 1)
    torch.testing.assert_close(frob["out"][:, 0], (B["out"] @ A["out"]).flatten(1).norm(dim=1))
    assert list(dsire.select_voters(voters, "A")) == ["inp.down", "fc1.down", "fc2.down", "out.down"]
    assert list(dsire.select_voters(voters, "BA")) == list(shapes)
    assert dsire.concat_features(voters)["all"].shape == (2, 36)
    one_by_one = {}
    for name in shapes:  # layer by layer (streaming), merged into the official order
        one_by_one.update(dsire.dsire_features({name: A[name]}, {name: B[name]}, scale=2.0))
    merged = dsire.official_order(one_by_one)
    assert list(merged) == list(voters) and all(torch.equal(merged[k], voters[k]) for k in voters)


def test_bad_inputs_get_one_line_errors():
    A, B = {"l": torch.randn(3, 4, 10)}, {"l": torch.randn(3, 8, 4)}
    with pytest.raises(ValueError, match="expected A"):
        dsire.dsire_features(A, {"l": torch.randn(3, 8, 5)})
    with pytest.raises(ValueError, match="same layers"):
        dsire.dsire_features(A, {"m": B["l"]})
    with pytest.raises(ValueError, match="models"):
        dsire.dsire_features({"l": A["l"], "m": torch.randn(2, 4, 10)}, {"l": B["l"], "m": torch.randn(2, 8, 4)})
    with pytest.raises(ValueError, match="NaN"):
        dsire.dsire_features({"l": A["l"].clone().fill_(float("nan"))}, B)
    with pytest.raises(ValueError, match="n_train_sets"):
        dsire.split_sets(10, 10)
    with pytest.raises(ValueError, match="same 3 models"):
        dsire.cross_validate({"v": torch.randn(3, 2)}, [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="vote"):
        dsire.predict({"v": torch.randn(2, 2)}, torch.tensor([1, 2]), {"v": torch.randn(1, 2)}, vote="median")


def test_majority_vote_and_the_first_seen_tie_rule_on_hand_made_votes():
    votes = torch.tensor([[1, 2, 2, 1],      # 2–2 tie: 1 appears first
                          [2, 1, 1, 2],      # 2–2 tie: 2 appears first
                          [3, 1, 1, 3],      # 2–2 tie: 3 appears first
                          [5, 1, 50, 50]])   # clear majority
    assert dsire.majority_vote(votes).tolist() == [1, 2, 3, 50]
    assert dsire.majority_vote(torch.tensor([[10, 20, 30]])).tolist() == [10]  # all different: the first voter
    g = torch.Generator().manual_seed(3)
    many = torch.tensor([1, 10, 20, 30, 40, 50])[torch.randint(0, 6, (500, 7), generator=g)]
    expected = [Counter(row).most_common(1)[0][0] for row in many.tolist()]
    assert dsire.majority_vote(many).tolist() == expected
    with pytest.raises(ValueError):
        dsire.majority_vote(torch.empty(3, 0, dtype=torch.long))


def test_nearest_neighbour_votes_per_voter_and_the_tie_to_the_earlier_training_model():
    train = {"a": torch.tensor([[0.0], [1.0], [2.0]]), "b": torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]])}
    test = {"a": torch.tensor([[1.9], [0.4]]), "b": torch.tensor([[4.0, 4.0], [0.1, 0.0]])}
    labels = torch.tensor([1, 2, 3])
    votes = dsire.nearest_neighbour_votes(train, labels, test)
    assert votes.tolist() == [[3, 2], [1, 1]]  # voter b's second query is equidistant to models 0 and 2: model 0
    pred, v = dsire.predict(train, labels, test)
    assert pred.tolist() == [3, 1] and torch.equal(v, votes)  # 3 vs 2 tie: voter a comes first
    avg, _ = dsire.predict(train, labels, test, vote="average")
    assert avg.tolist() == [2, 1]  # mean 2.5 snaps to the smaller of the two nearest sizes; mean 1 → 1


def test_split_protocol_is_the_official_seed_42_sampling():
    splits = dsire.split_sets(50, 15, 10, 42)
    assert splits[0] == [40, 7, 1, 17, 15, 14, 8, 6, 34, 5, 37, 27, 2, 47, 49]
    rng = random.Random(42)
    assert splits == [rng.sample(range(50), 15) for _ in range(10)]
    assert len(splits) == 10 and all(len(set(s)) == 15 for s in splits)
    assert len({tuple(sorted(s)) for s in splits}) == 10
    assert dsire.split_sets(10, 3, 10, 42)[0] == random.Random(42).sample(range(10), 3)


def _fixture(n_sets=50, sizes=(1, 10, 20, 30, 40, 50), n_voters=4, r=3, noise=0.3, seed=0):
    """Models whose voter features are noisy functions of the size (like real LoRA spectra)."""
    g = torch.Generator().manual_seed(seed)
    rows = [(s, n) for s in range(1, n_sets + 1) for n in sizes]
    size = torch.tensor([n for _, n in rows], dtype=torch.float64)
    feats = {f"v{i}": (size[:, None].log() * (i + 1) + noise * torch.randn(len(rows), r, generator=g,
                                                                           dtype=torch.float64))
             for i in range(n_voters)}
    return feats, [n for _, n in rows], [s for s, _ in rows]


def _loop_reference(feats, sizes, sets, n_train_sets, repeats, seed):
    """The official procedure written plainly: per voter a 1-NN over train models filled set by set (sampled
    order), size by size; a Counter vote; scikit-learn metrics per split."""
    names = sorted(set(sets))
    rng = random.Random(seed)
    out = []
    for _ in range(repeats):
        train_names = [names[i] for i in rng.sample(range(len(names)), n_train_sets)]
        train = [i for name in train_names for i in sorted((j for j in range(len(sets)) if sets[j] == name),
                                                            key=lambda j: sizes[j])]
        test = [i for i in range(len(sets)) if sets[i] not in train_names]
        preds = []
        for i in test:
            labels = []
            for v in feats.values():
                d = ((v[train].numpy() - v[i].numpy()) ** 2).sum(1)  # squared L2 to every train model
                labels.append(sizes[train[int(np.argmin(d))]])
            preds.append(Counter(labels).most_common(1)[0][0])
        out.append(dsire.scores([sizes[i] for i in test], preds))
    return out


def test_cross_validate_matches_a_plain_loop_of_the_official_procedure_and_counts_90_train_210_test():
    feats, sizes, sets = _fixture()
    res = dsire.cross_validate(feats, sizes, sets, n_train_sets=15, repeats=10, seed=42)
    ref = _loop_reference(feats, sizes, sets, 15, 10, 42)
    for m in dsire.METRICS:
        np.testing.assert_allclose(res[m], [r[m] for r in ref], rtol=1e-12)
        assert res[f"{m}_mean"] == pytest.approx(np.mean([r[m] for r in ref]))
        assert res[f"{m}_std"] == pytest.approx(np.std([r[m] for r in ref]))
    assert res["splits"][0] == [41, 8, 2, 18, 16, 15, 9, 7, 35, 6, 38, 28, 3, 48, 50]  # names = index + 1
    assert 50 < res["accuracy_mean"] < 100 and res["mae_mean"] > 0  # a learnable but imperfect signal
    # string names (the low range's Concept101 folders): set_order fixes which name index i means
    order = [f"concept{k}" for k in range(50, 0, -1)]
    named = dsire.cross_validate(feats, sizes, [f"concept{s}" for s in sets], 15, 10, 42, set_order=order)
    assert named["splits"][0][0] == order[40]
    with pytest.raises(ValueError, match="set_order"):
        dsire.cross_validate(feats, sizes, sets, 15, 1, 42, set_order=list(range(1, 50)))
    # 15 sets × 6 sizes = 90 training models, 35 × 6 = 210 test models per split
    assert sum(s in res["splits"][0] for s in sets) == 90 and sum(s not in res["splits"][0] for s in sets) == 210


def test_global_min_max_scaling_is_a_no_op_and_a_clean_signal_is_perfect():
    feats, sizes, sets = _fixture(n_sets=12, noise=0.3, seed=1)
    res = dsire.cross_validate(feats, sizes, sets, n_train_sets=4, repeats=5)
    lo = min(v.min() for v in feats.values())
    hi = max(v.max() for v in feats.values())
    scaled = dsire.cross_validate({k: (v - lo) / (hi - lo) for k, v in feats.items()}, sizes, sets, n_train_sets=4,
                            repeats=5)
    for m in dsire.METRICS:
        assert scaled[m] == pytest.approx(res[m])
    clean, sizes, sets = _fixture(n_sets=12, noise=0.0)
    perfect = dsire.cross_validate(clean, sizes, sets, n_train_sets=3, repeats=3)
    assert perfect["accuracy_mean"] == 100 and perfect["mae_mean"] == 0 and perfect["mape_std"] == 0
    avg = dsire.cross_validate(feats, sizes, sets, n_train_sets=4, repeats=5, vote="average")
    assert set(avg) == set(res)


def test_scores_are_accuracy_percent_mae_and_mape_percent():
    s = dsire.scores([1, 10, 20, 50], [1, 20, 20, 40])
    assert s["accuracy"] == pytest.approx(50.0)
    assert s["mae"] == pytest.approx((10 + 10) / 4)
    assert s["mape"] == pytest.approx(100 * (1.0 + 0.2) / 4)
