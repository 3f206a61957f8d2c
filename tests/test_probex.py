"""ProbeX (lab 02): architecture and parameter counts against the spec, the metric, the loader's matrix rules,
training on a seeded tiny tree, the zero-shot head, the router and the retrieval widget."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from torch.nn import functional as F

matplotlib.use("Agg")

from labkit.methods import probex as px

# ----------------------------------------------------------------------------------------------- architecture


def test_shapes_and_parameter_count_match_the_spec_formula():
    d_H, d_W, d_Y, r_U, r_V, r_T = 12, 9, 7, 5, 4, 6
    model = px.ProbeXClassifier(d_H, d_W, d_Y, n_probes=r_U, proj_dim=r_V, rep_dim=r_T)
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    assert shapes == {"encoder.U.weight": [r_U, d_W], "encoder.V.weight": [r_V, d_H],
                      "encoder.E.weight": [r_T, r_U * r_V], "encoder.E.bias": [r_T],
                      "head.weight": [d_Y, r_T], "head.bias": [d_Y]}
    n = sum(p.numel() for p in model.parameters())
    assert n == px.probex_param_count(d_H, d_W, d_Y, r_U, r_V, r_T)
    assert n == d_W * r_U + d_H * r_V + (r_U * r_V + 1) * r_T + (r_T + 1) * d_Y
    X = torch.randn(3, d_H, d_W)
    assert model.encoder(X).shape == (3, r_T) and model(X).shape == (3, d_Y)
    dense = px.DenseExpert(d_H, d_W, d_Y)
    assert sum(p.numel() for p in dense.parameters()) == px.dense_expert_param_count(d_H, d_W, d_Y)


def test_the_spec_table_of_parameter_counts():
    # spec §2: ViT 768×768 → 2.31 M (r_T 128) / 8.64 M (r_T 512), dense 58.98 M; ResNet 256×1024 → 2.27 M / 26.21 M
    assert px.probex_param_count(768, 768, 100, rep_dim=128) / 1e6 == pytest.approx(2.31, abs=0.005)
    assert px.probex_param_count(768, 768, 100, rep_dim=512) / 1e6 == pytest.approx(8.64, abs=0.005)
    assert px.dense_expert_param_count(768, 768, 100) / 1e6 == pytest.approx(58.98, abs=0.005)
    assert px.probex_param_count(256, 1024, 100, rep_dim=128) / 1e6 == pytest.approx(2.27, abs=0.005)
    assert px.dense_expert_param_count(256, 1024, 100) / 1e6 == pytest.approx(26.21, abs=0.005)
    zs = px.ProbeXZeroShot(1280, 1280, 768, rep_dim=512)  # SD 1280×1280 with the 768→512 text head: 9.11 M
    assert sum(p.numel() for p in zs.parameters()) / 1e6 == pytest.approx(9.11, abs=0.005)
    fl = px.forward_flops(768, 768, 100, rep_dim=512)  # ≈193 MFLOP against 118 MFLOP (2 FLOPs per MAC)
    assert 2 * fl["probex"] / 1e6 == pytest.approx(193, abs=1) and 2 * fl["dense"] / 1e6 == pytest.approx(118, abs=1)


def test_encoder_is_the_spec_pseudo_code_written_out():
    torch.manual_seed(0)
    enc = px.ProbeX(6, 5, n_probes=3, proj_dim=4, rep_dim=2)
    X = torch.randn(2, 6, 5)
    U, V, E, b = enc.U.weight.T, enc.V.weight, enc.E.weight, enc.E.bias
    expected = torch.empty(2, 2)
    for i in range(2):  # Σ_l M_l relu(V (X U)_l) + b, with M_l the probe-major block of E
        R = X[i] @ U  # [d_H, r_U]
        acc = b.clone()
        for probe in range(3):
            acc += E[:, probe * 4:(probe + 1) * 4] @ torch.relu(V @ R[:, probe])
        expected[i] = acc
    torch.testing.assert_close(enc(X), expected)
    with pytest.raises(ValueError, match=r"reads \[6, 5\] layers"):
        enc(torch.randn(2, 5, 6))


def test_cosine_logits_and_zero_shot_head():
    torch.manual_seed(0)
    e, t = torch.randn(4, 3), torch.randn(5, 3)
    expected = torch.tensor([[float(F.cosine_similarity(a, c, dim=0)) for c in t] for a in e])
    torch.testing.assert_close(px.cosine_logits(e, t), expected)
    zs = px.ProbeXZeroShot(6, 5, 8, n_probes=3, proj_dim=4, rep_dim=7)
    out = zs(torch.randn(2, 6, 5), torch.randn(9, 8))
    assert out.shape == (2, 9) and out.abs().max() <= 1 + 1e-6  # no temperature


# --------------------------------------------------------------------------------------------------- metric


def test_binary_accuracy_on_hand_made_cases():
    Y = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert px.binary_accuracy(torch.tensor([[2.0, -1.0, 3.0, -4.0], [-1.0, 1.0, -1.0, 1.0]]), Y) == 1.0
    assert px.binary_accuracy(-torch.tensor([[2.0, -1.0, 3.0, -4.0], [-1.0, 1.0, -1.0, 1.0]]), Y) == 0.0
    assert px.binary_accuracy(torch.ones(2, 4), Y) == 0.5  # "all on" is chance when half the labels are on
    assert px.binary_accuracy(torch.zeros(2, 4), Y) == 0.5  # logit 0 = sigmoid 0.5, which is not > 0.5: "off"
    assert px.binary_accuracy(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 1.0]]), Y) == 5 / 8
    with pytest.raises(ValueError, match="same shape"):
        px.binary_accuracy(torch.zeros(2, 3), Y)


# ------------------------------------------------------------------------------------------- loader rules


def test_as_matrix_reproduces_the_loader_quirks():
    conv = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    torch.testing.assert_close(px.as_matrix(conv), conv.reshape(-1, 4))  # reshape, not permute
    assert px.as_matrix(conv).shape == (12, 4)
    assert px.as_matrix(torch.zeros(5, 7, 1, 1)).shape == (5, 7)  # 1×1 conv squeezed
    assert px.as_matrix(torch.zeros(1, 197, 16)).shape == (197, 16)  # position embedding squeezed
    assert px.as_matrix(torch.zeros(9)).shape == (9, 1)
    W = torch.randn(3, 4)
    assert px.as_matrix(W) is W


def test_stack_layer_shapes_and_errors():
    states = [{"a.weight": torch.randn(3, 4), "b.weight": torch.randn(2, 1, 1)} for _ in range(5)]
    assert px.stack_layer(states, "a.weight").shape == (5, 3, 4)
    assert px.stack_layer(states, "a.weight", transpose=True).shape == (5, 4, 3)
    assert px.stack_layer(states, "b.weight").shape == (5, 2, 1)
    with pytest.raises(KeyError, match="missing"):
        px.stack_layer(states, "c.weight")
    with pytest.raises(ValueError, match="different shapes"):
        px.stack_layer([{"a": torch.zeros(2, 2)}, {"a": torch.zeros(3, 2)}], "a")
    with pytest.raises(ValueError, match="at least one"):
        px.stack_layer([], "a")


def test_bad_inputs_give_clear_errors():
    X, Y = torch.randn(4, 3, 3), torch.tensor([[1.0, 0.0]] * 4)
    with pytest.raises(ValueError, match=r"\[N, d_H, d_W\]"):
        px.train_probex(X.flatten(1), Y, epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        px.train_probex(torch.full((4, 3, 3), float("nan")), Y, epochs=1)
    with pytest.raises(ValueError, match="multi-hot"):
        px.train_probex(X, Y[:3], epochs=1)
    with pytest.raises(ValueError, match="only 0 and 1"):
        px.train_probex(X, Y * 2, epochs=1)


# ----------------------------------------------------------------------------------------- training


def tiny_tree(n: int = 120, d: int = 12, classes: int = 6, seed: int = 0):
    """A seeded toy Model Tree: child = root + Σ_{c chosen} direction_c + noise; 3 of 6 classes chosen per child."""
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(d, d, generator=g)
    directions = 0.3 * torch.randn(classes, d, d, generator=g)
    Y = torch.zeros(n, classes)
    for i in range(n):
        Y[i, torch.randperm(classes, generator=g)[:classes // 2]] = 1.0
    X = root + torch.einsum("nc,cij->nij", Y, directions) + 0.3 * torch.randn(n, d, d, generator=g)
    return X, Y


def test_tiny_training_run_beats_chance_and_stat_nn():
    X, Y = tiny_tree()
    tr, va, te = slice(0, 80), slice(80, 100), slice(100, 120)
    kw = {"n_probes": 8, "proj_dim": 8, "rep_dim": 16, "epochs": 150, "eval_every": 10, "batch_size": 32}
    model, hist = px.train_probex(X[tr], Y[tr], X[va], Y[va], **kw)
    acc = px.probex_accuracy(model, X[te], Y[te])
    assert acc > 0.75  # chance is 0.5
    assert hist.best_val == max(hist.val_acc) and hist.epochs[0] == 0
    stat, _ = px.train_statnn(X[tr], Y[tr], X[va], Y[va], epochs=150, eval_every=10, batch_size=32)
    assert px.probex_accuracy(stat, X[te], Y[te]) < acc
    dense, _ = px.train_dense_expert(X[tr], Y[tr], X[va], Y[va], epochs=150, eval_every=10, batch_size=32)
    assert px.probex_accuracy(dense, X[te], Y[te]) > 0.6


def test_best_val_checkpoint_is_the_one_returned():
    X, Y = tiny_tree(n=60)
    model, hist = px.train_probex(X[:40], Y[:40], X[40:], Y[40:], n_probes=4, proj_dim=4, rep_dim=8, epochs=40,
                                  eval_every=5)
    assert px.probex_accuracy(model, X[40:], Y[40:]) == pytest.approx(hist.best_val)
    again, _ = px.train_probex(X[:40], Y[:40], X[40:], Y[40:], n_probes=4, proj_dim=4, rep_dim=8, epochs=40,
                               eval_every=5)
    torch.testing.assert_close(again(X), model(X))  # seeded: the same run twice


def test_zero_shot_generalises_through_text_on_a_toy_concept_zoo():
    # concept (a, b) → weight direction u_a + w_b; text embedding = one-hot(a) ⊕ one-hot(b); hold out 3 concepts
    g = torch.Generator().manual_seed(1)
    d, na, nb = 8, 4, 4
    u, w = torch.randn(na, d, d, generator=g), torch.randn(nb, d, d, generator=g)
    concepts = [(a, b) for a in range(na) for b in range(nb)]
    held = [(0, 1), (1, 2), (2, 3)]
    seen = [c for c in concepts if c not in held]

    def embed(cs):
        return torch.stack([torch.cat([F.one_hot(torch.tensor(a), na), F.one_hot(torch.tensor(b), nb)]).float()
                            for a, b in cs])

    def loras(cs, per):
        X = torch.stack([u[a] + w[b] + 0.1 * torch.randn(d, d, generator=g) for a, b in cs for _ in range(per)])
        return X, torch.arange(len(cs)).repeat_interleave(per)

    X, y = loras(seen, 6)
    Xh, yh = loras(held, 4)
    model, _ = px.train_zero_shot(X, y, embed(seen), n_probes=8, proj_dim=8, rep_dim=16, epochs=150, batch_size=32)
    assert px.zero_shot_accuracy(model, X, y, embed(seen)) > 0.9
    assert px.zero_shot_accuracy(model, Xh, yh, embed(held)) > 1 / 3  # chance among the 3 held-out texts
    with pytest.raises(ValueError, match="class indices"):
        px.zero_shot_accuracy(model, Xh, yh + 5, embed(held))


def test_draw_heldout_concepts_keeps_every_digit_and_style_seen():
    concepts = [(d, s) for d in range(10) for s in range(9)]
    for seed in range(5):
        held = px.draw_heldout_concepts(concepts, 18, seed=seed)
        assert len(held) == len(set(held)) == 18 and held == sorted(held)
        seen = [c for i, c in enumerate(concepts) if i not in held]
        assert {d for d, _ in seen} == set(range(10)) and {s for _, s in seen} == set(range(9))
    assert px.draw_heldout_concepts(concepts, 18, seed=3) == px.draw_heldout_concepts(concepts, 18, seed=3)
    assert px.draw_heldout_concepts(concepts, 18, seed=3) != px.draw_heldout_concepts(concepts, 18, seed=4)
    with pytest.raises(ValueError, match="keeps every attribute"):  # 3 of 4 concepts out: a value must go
        px.draw_heldout_concepts([(0, 0), (0, 1), (1, 0), (1, 1)], 3, max_tries=50)
    with pytest.raises(ValueError, match="n_heldout"):
        px.draw_heldout_concepts(concepts, 90)


def test_calibrated_stacking_and_the_choice_of_gamma():
    seen = torch.tensor([True, True, False])
    scores = torch.tensor([[0.9, 0.1, 0.5],   # seen class 0, right by 0.4
                           [0.2, 0.8, 0.5],   # seen class 1, right by 0.3
                           [0.6, 0.1, 0.45],  # unseen class 2, loses by 0.15 without calibration
                           [0.1, 0.7, 0.3]])  # unseen class 2, loses by 0.4
    y = torch.tensor([0, 1, 2, 2])
    torch.testing.assert_close(px.calibrated_stacking(scores, seen, 0.2)[:, 2], scores[:, 2])
    torch.testing.assert_close(px.calibrated_stacking(scores, seen, 0.2)[:, :2], scores[:, :2] - 0.2)
    gamma, H = px.choose_calibration(scores, y, seen, torch.tensor([0.0, 0.2, 0.25, 0.35, 0.5]))
    # (seen, unseen) accuracy: γ=0 (1, 0); 0.2 and 0.25 (1, 1/2); 0.35 (1/2, 1/2); 0.5 (0, 1/2); first of equals wins
    torch.testing.assert_close(H, torch.tensor([0.0, 2 / 3, 2 / 3, 1 / 2, 0.0]))
    assert gamma == pytest.approx(0.2)
    with pytest.raises(ValueError, match="both seen and unseen"):
        px.choose_calibration(scores[:2], y[:2], seen, torch.tensor([0.0]))


def test_nearest_root_router():
    g = torch.Generator().manual_seed(0)
    roots = torch.randn(3, 5, 5, generator=g) * 3
    trees = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    X = roots[trees] + 0.1 * torch.randn(7, 5, 5, generator=g)
    assert torch.equal(px.nearest_root_router(X, roots), trees)
    with pytest.raises(ValueError, match="same layer shape"):
        px.nearest_root_router(X, torch.randn(3, 4, 5))


# ---------------------------------------------------------------------------------------- widget and plots


def _search(query: str, k: int) -> dict:
    g = torch.Generator().manual_seed(len(query))
    return {"ids": [f"m{i}" for i in range(k)], "descriptions": [f"concept {i}" for i in range(k)],
            "scores": torch.linspace(0.9, 0.5, k).tolist(), "samples": torch.rand(k, 4, 8, 8, generator=g)}


def test_retrieval_explorer_runs_the_search_on_every_change():
    from labkit.widgets import RetrievalExplorer

    ex = RetrievalExplorer(_search, query="a thick seven", k=3)
    assert ex.state["query"] == "a thick seven" and ex.state["ids"] == ["m0", "m1", "m2"]
    assert ex.image.value[:4] == b"\x89PNG"
    ex.k.value = 5
    assert len(ex.state["ids"]) == 5
    ex.query.value = "  "
    assert ex.state["ids"] == [] and "type a description" in ex.label.value
    with pytest.raises(ValueError, match="between 1 and max_k"):
        RetrievalExplorer(_search, k=0)
    calls = []
    ex = RetrievalExplorer(lambda q, k, calibration: calls.append(calibration) or _search(q, k), k=2,
                           calibration=0.2)
    assert calls == [0.2] and len(ex.state["ids"]) == 2  # a nonzero γ is passed on to the search


def test_retrieval_figure():
    from labkit.plots import retrieval_figure

    res = _search("q", 3)
    fig = retrieval_figure("q", res["descriptions"], res["scores"], res["samples"])
    assert len(fig.axes) == 3


def test_evaluation_cadence_is_the_official_one_and_no_val_keeps_the_last_epoch():
    X, Y = tiny_tree(n=40)
    _, hist = px.train_probex(X[:30], Y[:30], X[30:], Y[30:], n_probes=4, proj_dim=4, rep_dim=8, epochs=52,
                              eval_every=25)
    assert hist.epochs == [0, 25, 50]  # epoch % 25 == 0, epoch 51 is not evaluated
    model, hist = px.train_probex(X[:30], Y[:30], n_probes=4, proj_dim=4, rep_dim=8, epochs=5, eval_every=2)
    assert hist.best_epoch == 4 and hist.epochs == [0, 2, 4]
    assert model(X[:0]).shape == (0, 6)
