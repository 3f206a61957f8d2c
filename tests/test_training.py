"""Stacked training (labkit.training, labkit.digit_batches) against the one-model-at-a-time reference loops."""

import pytest
import torch
from torch import nn

from labkit.data import load_digits_split
from labkit.digit_batches import augment_images, batch_schedule, digit_stream
from labkit.models import make_cnn, make_mlp, make_siren, pixel_coordinates
from labkit.training import (
    BatchedAdamW,
    batched_accuracy,
    fit_batched,
    fit_full_batch,
    fit_loop,
    fit_stacked,
    init_states,
    last_losses,
    stack_states,
    unstack_state,
)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_digits_split()


def _subsets(y, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nonzero(torch.isin(y, torch.randperm(10, generator=g)[:5])).flatten() for _ in range(K)]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batched_equals_loop(digits, arch):
    make = (lambda: make_mlp(64, (64, 64), 10)) if arch == "mlp" else (lambda: make_cnn(8, 3, "gelu"))
    X, y = digits.X_train, digits.y_train
    K = 4
    subsets = _subsets(y, K)
    root = init_states(make, [0])[0]
    hp = dict(epochs=[1, 2, 2, 1], lr=[1e-3, 3e-3, 5e-3, 2e-3], weight_decay=[0.0, 0.01, 0.03, 0.1],
              seeds=[5, 6, 7, 8], shift=[True, False, True, False], noise=[False, True, True, False])
    params, _ = fit_batched(make(), stack_states([root] * K), X, y, subsets, batch_size=32, **hp)
    for k in range(K):
        ref = fit_loop(make(), root, X, y, subsets[k], epochs=hp["epochs"][k], lr=hp["lr"][k],
                       weight_decay=hp["weight_decay"][k], seed=hp["seeds"][k], batch_size=32,
                       shift=hp["shift"][k], noise=hp["noise"][k])
        got = unstack_state(params, k)
        moved = max((ref[n] - root[n]).abs().max().item() for n in ref)
        err = max((ref[n] - got[n]).abs().max().item() for n in ref)
        assert moved > 1e-2, "training did not change the weights"
        assert err < 1e-4 * max(1.0, moved), f"model {k}: batched differs from the loop by {err}"


def test_masked_model_is_frozen_and_adamw_matches_torch():
    torch.manual_seed(0)
    p = torch.randn(3, 5, 4)
    g = torch.randn(3, 5, 4)
    ref = p[1].clone().requires_grad_(True)
    opt_ref = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1)
    opt = BatchedAdamW({"w": p}, torch.tensor([0.1, 0.01, 0.5]), torch.tensor([0.0, 0.1, 0.2]))
    before = p.clone()
    for _ in range(3):
        ref.grad = g[1].clone()
        opt_ref.step()
        opt.step({"w": g}, torch.tensor([True, True, False]))
    assert torch.allclose(p[1], ref.detach(), atol=1e-6)
    assert torch.equal(p[2], before[2]), "an inactive model must not move"
    assert not torch.allclose(p[0], before[0])


def test_models_in_a_batch_do_not_interact(digits):
    """Model k trained alone equals model k trained with others (own seed, own data, own epochs)."""
    X, y = digits.X_train, digits.y_train
    make = lambda: make_mlp(64, (32,), 10)  # noqa: E731
    states = init_states(make, [1, 2, 3])
    subsets = _subsets(y, 3, seed=1)
    kw = dict(epochs=[2, 1, 3], lr=[3e-3, 1e-2, 1e-3], weight_decay=[0.01, 0.0, 0.02], seeds=[1, 2, 3])
    together, _ = fit_batched(make(), stack_states(states), X, y, subsets, **kw)
    alone, _ = fit_batched(make(), stack_states(states[1:2]), X, y, subsets[1:2],
                           **{k: v[1:2] for k, v in kw.items()})
    for n in alone:
        torch.testing.assert_close(together[n][1], alone[n][0], atol=1e-5, rtol=1e-4)


def test_schedule_and_init_depend_only_on_seed():
    a = batch_schedule(torch.arange(100), 2, 16, seed=3)
    b = batch_schedule(torch.arange(100), 2, 16, seed=3)
    c = batch_schedule(torch.arange(100), 2, 16, seed=4)
    assert a.idx.shape == (12, 16) and torch.equal(a.idx, b.idx) and not torch.equal(a.idx, c.idx)
    state = torch.random.get_rng_state()
    s1 = init_states(make_siren, [7, 8])
    assert torch.equal(state, torch.random.get_rng_state()), "init_states must not touch the global RNG"
    assert torch.equal(s1[0]["seq.0.weight"], init_states(make_siren, [7])[0]["seq.0.weight"])
    with pytest.raises(ValueError, match="fewer than the batch size"):
        batch_schedule(torch.arange(10), 1, 16, seed=0)


def test_augment_shift_moves_pixels():
    X = torch.rand(2, 64)
    z = torch.zeros(2, dtype=torch.long)
    same = augment_images(X, z, z, z, torch.tensor(True), torch.tensor(False))
    torch.testing.assert_close(same, X)
    right = augment_images(X, z - 1, z, z, torch.tensor(True), torch.tensor(False)).view(2, 8, 8)
    torch.testing.assert_close(right[:, :, 1:], X.view(2, 8, 8)[:, :, :-1])
    assert (right[:, :, 0] == 0).all()


def test_siren_full_batch_fits_images(digits):
    images = digits.X_train[:6, :, None]
    params = stack_states(init_states(make_siren, range(6)))
    _, loss = fit_full_batch(make_siren(), params, pixel_coordinates(), images, steps=150, lr=1e-3)
    assert loss.shape == (6,) and (loss < 1e-3).all()


def test_batched_accuracy_masks(digits):
    model = make_mlp(64, (16,), 10)
    params = stack_states(init_states(lambda: make_mlp(64, (16,), 10), [0, 1]))
    mask = torch.stack([digits.y_test == 3, digits.y_test != 3])
    acc = batched_accuracy(model, params, digits.X_test, digits.y_test, mask)
    model.load_state_dict(unstack_state(params, 0))
    with torch.no_grad():
        pred = model(digits.X_test[mask[0]]).argmax(-1)
    assert acc[0].item() == pytest.approx((pred == 3).float().mean().item())


def test_stack_states_refuses_two_architectures():
    small, big = init_states(lambda: make_mlp(64, (16,), 10), [0])[0], init_states(lambda: make_mlp(64, (32,), 10), [0])[0]
    assert stack_states([small, small])["fc1.weight"].shape == (2, 16, 64)
    with pytest.raises(ValueError, match="model 1 .* different architectures"):
        stack_states([small, big])
    with pytest.raises(ValueError, match="model 1 .* different architectures"):
        stack_states([small, {k: v for k, v in small.items() if k != "fc1.bias"}])


def test_fit_stacked_masks_records_and_checks():
    """Masked models do not move (yet their loss is recorded); a torch optimiser must hold exactly the params."""
    target = torch.tensor([[1.0], [2.0], [3.0]])
    w = torch.zeros(3, 1, requires_grad=True)
    params = {"w": w}
    active = torch.tensor([[True, True, False], [True, False, False], [True, False, False]])  # [steps, K]
    history = fit_stacked(params, lambda t: (w - target).pow(2)[:, 0], 3,
                          BatchedAdamW(params, torch.full((3,), 0.1), torch.zeros(3)), active=active)
    assert history.shape == (3, 3) and history[:, 2].tolist() == [9.0, 9.0, 9.0]
    assert w[2].item() == 0.0 and w[1].item() == pytest.approx(0.1) and w[0].item() > w[1].item()
    assert last_losses(history, torch.tensor([3, 1, 0]))[:2].tolist() == [history[2, 0].item(), 4.0]
    assert last_losses(history, torch.tensor([3, 1, 0]))[2].isnan()
    with pytest.raises(ValueError, match="needs BatchedAdamW"):
        fit_stacked(params, lambda t: w[:, 0], 3, torch.optim.Adam([w]), active=active)
    with pytest.raises(ValueError, match="exactly the tensors"):
        fit_stacked(params, lambda t: w[:, 0], 3, torch.optim.Adam([torch.zeros(1, requires_grad=True)]))
    with pytest.raises(ValueError, match="one loss per model"):
        fit_stacked(params, lambda t: w.sum(), 1, torch.optim.Adam([w]))


def test_digit_stream_pads_and_masks(digits):
    X, y = digits.X_train, digits.y_train
    subsets = [torch.arange(64), torch.arange(100, 132)]
    stream = digit_stream(X, y, subsets, epochs=[1, 2], seeds=[0, 1], batch_size=32)
    assert stream.lengths.tolist() == [2, 2] and stream.steps == 2 and stream.active.all()
    stream = digit_stream(X, y, subsets, epochs=[2, 1], seeds=[0, 1], batch_size=32)
    assert stream.lengths.tolist() == [4, 1] and stream.active[:, 1].tolist() == [True, False, False, False]
    x, target = stream.batch(0)
    assert x.shape == (2, 32, 64) and target.shape == (2, 32)
    assert torch.equal(target[1], y[batch_schedule(subsets[1], 1, 32, seed=1).idx[0]])


def test_kurtosis_trajectory_is_a_plain_adamw_loop():
    """The kurtosis experiment trains through fit_classifier; the loop it replaced gives the same κ bit for bit."""
    import copy

    from labkit.kurtosis_runs import kurtosis_trajectory
    from labkit.methods.mother import kurtosis

    torch.manual_seed(0)
    X, y = torch.randn(120, 16), torch.randint(0, 4, (120,))
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    subsets, lrs, names = [torch.arange(0, 50), torch.arange(30, 120)], [1e-3, 5e-3], ["2.weight"]
    got = kurtosis_trajectory(model, X, y, subsets, lrs, epochs=3, batch_size=16, layer_names=names, seed=4)

    for k, (rows, lr) in enumerate(zip(subsets, lrs)):
        net = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(4 + k)
        snaps = [net.state_dict()[names[0]].clone()]
        for _ in range(3):
            order = rows[torch.randperm(len(rows), generator=g)]
            for s in range(0, len(order), 16):
                b = order[s:s + 16]
                loss = nn.functional.cross_entropy(net(X[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            snaps.append(net.state_dict()[names[0]].clone())
        assert torch.equal(got[k], kurtosis({names[0]: torch.stack(snaps)}))
    assert not torch.equal(got[0], got[1])
