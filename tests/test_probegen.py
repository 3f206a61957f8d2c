"""ProbeGen (lab 03): batched forward = the per-network loop, generator shapes and sizes, τ, a seeded tiny run."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import kendalltau

from labkit.methods import probegen as pg
from labkit.models import make_cnn, make_siren
from labkit.training import init_states, stack_states


def _sirens(n, seed=0, bias=None):
    states = init_states(make_siren, range(seed, seed + n))
    if bias is not None:
        for s, b in zip(states, bias, strict=True):
            s["seq.2.bias"] = torch.tensor([float(b)])
    return states


def _cnn_zoo():
    """Three architecture groups (width, activation) of random CNNs, and their modules in zoo order."""
    groups, modules = [], []
    for k, (width, act) in enumerate([(4, "relu"), (8, "tanh"), (4, "sigmoid")]):
        make = lambda w=width, a=act: make_cnn(w, 3, a).eval()  # noqa: E731
        states = init_states(make, range(10 * k, 10 * k + 3 + k))
        groups.append(pg.NetGroup(make(), stack_states(states)))
        for s in states:
            m = make()
            m.load_state_dict(s)
            modules.append(m)
    return pg.Networks(groups), modules


def test_batched_forward_equals_the_per_network_loop_for_sirens():
    states = _sirens(7)
    nets = pg.Networks([pg.NetGroup(make_siren().eval(), stack_states(states))])
    modules = [make_siren() for _ in states]
    for m, s in zip(modules, states, strict=True):
        m.load_state_dict(s)
    P = pg.uniform_coordinates(20, torch.Generator().manual_seed(0))
    torch.testing.assert_close(nets.responses(P), pg.responses_loop(modules, P), rtol=1e-5, atol=1e-5)
    idx = torch.tensor([5, 0, 3])
    torch.testing.assert_close(nets.responses(P, idx), pg.responses_loop([modules[i] for i in idx], P),
                               rtol=1e-5, atol=1e-5)
    stacked = stack_states(states)
    by_matmul = pg.siren_probe_responses(*(stacked[f"seq.{i}.{k}"] for i in range(3) for k in ("weight", "bias")), P)
    torch.testing.assert_close(by_matmul, nets.responses(P).squeeze(-1), rtol=1e-5, atol=1e-5)


def test_batched_forward_equals_the_loop_across_architecture_groups_with_gradients():
    nets, modules = _cnn_zoo()
    assert len(nets) == 3 + 4 + 5
    idx = torch.tensor([11, 2, 7, 0, 4, 9])  # mixed groups, any order
    P1 = torch.randn(6, 1, 8, 8, requires_grad=True)
    P2 = P1.detach().clone().requires_grad_(True)
    batched = nets.responses(P1, idx)
    loop = pg.responses_loop([modules[i] for i in idx], P2)
    assert batched.shape == (6, 6, 10)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    batched.square().sum().backward()
    loop.square().sum().backward()
    torch.testing.assert_close(P1.grad, P2.grad, rtol=1e-4, atol=1e-5)


def test_subset_keeps_groups_and_rejects_a_mixed_order():
    nets, _ = _cnn_zoo()
    sub = nets.subset([0, 2, 3, 10])
    assert len(sub) == 4 and len(sub.groups) == 3
    P = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(sub.responses(P), nets.responses(P, torch.tensor([0, 2, 3, 10])))
    with pytest.raises(ValueError, match="grouped by architecture"):
        nets.subset([10, 0])


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_inr_generator_shapes(depth):
    model = pg.ProbeGen(pg.TASKS["inr"], n_probes=16, gen_depth=depth)
    assert model.probes().shape == (16, 2)
    assert model(torch.randn(5, 16, 1)).shape == (5, 10)
    assert not any(isinstance(m, torch.nn.ReLU | torch.nn.Tanh) for m in model.generator.modules())


@pytest.mark.parametrize("depth", [0, 1, 2, 4, 6])
def test_cnn_generator_shapes_end_in_tanh(depth):
    model = pg.ProbeGen(pg.TASKS["cnn"], n_probes=12, gen_depth=depth)
    P = model.probes()
    assert P.shape == (12, 1, 8, 8) and P.abs().max() < 1
    assert model(torch.randn(3, 12, 10)).shape == (3, 1)
    with pytest.raises(ValueError, match="at most 6"):
        pg.make_generator(pg.TASKS["cnn"], 7)


def test_parameter_counts_match_the_spec():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    model = pg.ProbeGen(pg.TASKS["inr"], n_probes=128, gen_depth=2)
    assert count(model.head) == 298_762
    assert count(model.generator) + model.latents.numel() == 5_218
    vanilla = pg.ProbeGen(pg.TASKS["inr"], n_probes=128, gen_depth=0)
    assert vanilla.latents.numel() == 256 and count(vanilla.generator) == 0
    cnn = pg.ProbeGen(pg.TASKS["cnn"], n_probes=128, gen_depth=6)
    assert count(cnn.head) == 591_361


def test_a_deep_linear_generator_is_one_affine_map():
    g = torch.Generator().manual_seed(0)
    W = [torch.randn(8, 4, generator=g), torch.randn(8, 8, generator=g), torch.randn(2, 8, generator=g)]
    b = [torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randn(2, generator=g)]
    Z = torch.randn(10, 4, generator=g)
    Wc, bc = pg.collapse_linear(W, b)
    torch.testing.assert_close(pg.deep_linear(Z, W, b), Z @ Wc.T + bc, rtol=1e-4, atol=1e-4)
    gen = pg.make_generator(pg.TASKS["inr"], 3, z_dim=4, gen_width=8)
    layers = list(gen)
    torch.testing.assert_close(gen(Z), pg.deep_linear(Z, [m.weight for m in layers], [m.bias for m in layers]))


def test_kendall_tau_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a = torch.randint(0, 6, (25,), generator=g).double()
        b = a + torch.randint(-2, 3, (25,), generator=g)
        assert float(pg.kendall_tau(a, b)) == pytest.approx(kendalltau(a.numpy(), b.numpy()).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="length"):
        pg.kendall_tau(torch.ones(3), torch.ones(4))


def test_synthetic_probes():
    g = torch.Generator().manual_seed(0)
    U = pg.uniform_coordinates(50, g)
    assert U.shape == (50, 2) and U.abs().max() <= 1
    D = pg.dead_leaves(10, generator=g)
    assert D.shape == (10, 1, 8, 8) and D.min() >= 0 and D.max() <= 1
    assert len(torch.unique(D[0])) > 1  # several leaves visible


def test_clear_errors():
    states = _sirens(3)
    with pytest.raises(ValueError, match="do not fit"):
        pg.NetGroup(make_cnn(4), stack_states(states))
    bad = stack_states(states)
    bad["seq.0.weight"][1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        pg.NetGroup(make_siren(), bad)
    nets = pg.Networks([pg.NetGroup(make_siren(), stack_states(states))])
    with pytest.raises(ValueError, match="3 networks but 2 labels"):
        pg.train_probegen("inr", nets, torch.tensor([0, 1]), nets, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="fixed probes"):
        pg.ProbeGen(pg.TASKS["inr"], fixed_probes=torch.zeros(4, 3))


def _toy_inr_zoo(n, seed):
    """SIRENs whose class (0..3) sets their output level; the probes must read it through the network."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    level = 0.5 * y.float() + 0.05 * torch.randn(n, generator=g)
    states = _sirens(n, seed, bias=level)
    return pg.Networks([pg.NetGroup(make_siren().eval(), stack_states(states))]), y


@pytest.mark.parametrize("depth", [0, 2])
def test_a_seeded_tiny_run_beats_chance(depth):
    train, y_train = _toy_inr_zoo(96, 0)
    val, y_val = _toy_inr_zoo(32, 1000)
    test, y_test = _toy_inr_zoo(64, 2000)
    run = pg.train_probegen("inr", train, y_train, val, y_val, n_probes=8, gen_depth=depth, d_hid=64, epochs=60,
                            lr=1e-3, eval_every=30, test=test, y_test=y_test)
    assert run.test > 0.5  # chance is 0.25
    assert run.best_val == max(v for _, v in run.history)
    assert run.probes.shape == (8, 2)


def test_synthetic_baseline_and_statnn_on_a_toy_regression():
    nets, _ = _cnn_zoo()
    y = torch.cat([g.params["fc.bias"].mean(1) for g in nets.groups])
    feats = torch.cat([pg.statnn_param_features(g.params) for g in nets.groups])
    assert feats.shape == (12, 8 * 7)
    run = pg.train_probegen("cnn", nets, y, nets, y, fixed_probes=pg.dead_leaves(6), d_hid=32, epochs=5,
                            batch_size=4, lr=1e-3)
    assert run.probes.shape == (6, 1, 8, 8)
    assert -1 <= pg.task_metric(run.model, pg.TASKS["cnn"], nets, y) <= 1
    assert pg.statnn_baseline(feats, y, feats, y) > 0.8  # the fc bias is one of the statistics


def test_the_papers_32px_generators_have_the_specified_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    gs = pg.ProbeGen(pg.TASKS["cifar10-gs"], n_probes=128, gen_depth=6)
    assert count(gs.generator) == 247_201 and gs.latents.numel() == 4_096 and count(gs.head) == 591_361
    assert gs.probes().shape == (128, 1, 32, 32)
    park = pg.ProbeGen(pg.TASKS["wild-park"], n_probes=4, gen_depth=5)
    assert count(park.generator) == 238_243 and park.probes().shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="deep_linear_5 and deep_linear_6"):
        pg.make_generator(pg.TASKS["cifar10-gs"], 3)
