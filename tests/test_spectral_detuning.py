"""Spectral DeTuning (labkit.methods.spectral_detuning): recovery, the rank scheduler, batched == loop."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.methods import spectral_detuning as sd


def make_layers(d_out, d_in, n, r, n_layers=1, seed=0, dtype=torch.float64, ranks=None):
    """Synthetic LoWRA-style layers: W'_i = W_P + (alpha/r) B_i A_i with Gaussian·0.02 factors, alpha = r."""
    g = torch.Generator().manual_seed(seed)
    W_P = torch.randn(n_layers, d_out, d_in, generator=g, dtype=dtype) * 0.02
    merged = []
    for layer in range(n_layers):
        rl = r if ranks is None else ranks[layer]
        B = torch.randn(n, d_out, rl, generator=g, dtype=dtype) * 0.02
        A = torch.randn(n, rl, d_in, generator=g, dtype=dtype) * 0.02
        merged.append(W_P[layer] + B @ A)
    return W_P, torch.stack(merged)


def changes(rank_trace):
    """[(iteration, new rank)] where the rank used changes."""
    idx = (rank_trace[1:] != rank_trace[:-1]).nonzero().flatten() + 1
    return [(int(i), int(rank_trace[i])) for i in idx]


# ---------------------------------------------------------------- recovery and the baseline


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def num_threads(request):
    """Run the test with torch using 1, then 2 intra-op threads (BLAS summation order differs); restore after."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype, bound", [(torch.float64, -20.0), (torch.float32, -15.0)])
def test_exact_recovery_beats_mean_lora(dtype, bound, num_threads):
    # the subspace path must be taken whatever the thread count / CPU (issue 13 item 6: with float64 inputs
    # it used to depend on the rounding of ‖C‖² − ‖c‖², ~1e11 times the acceptance threshold)
    torch.manual_seed(0)
    W_P, merged = make_layers(64, 80, n=5, r=4, n_layers=2, dtype=dtype)
    before = merged.clone()
    res = sd.spectral_detuning_layers(merged, end_rank=4, n_iters=120)
    assert torch.equal(merged, before)  # the input is not modified
    assert res.subspace  # LoRA differences: the low-rank subspace path runs
    assert res.W_star.shape == (2, 64, 80) and res.W_star.dtype == dtype
    err = sd.w_error(res.W_star, W_P)
    base = sd.w_error(sd.mean_lora(merged), W_P)
    assert err < bound, err
    assert base > -8.0 and err < base - 6, (base, err)
    assert sd.converged_share(res.W_star, W_P) == 1.0
    assert sd.converged_share(sd.mean_lora(merged), W_P) == 0.0
    assert res.loss.shape == res.rank.shape == (120, 2)
    assert (res.rank[60:] == 4).all()  # forced to the end rank from half of the iterations on


def test_lowrank_and_exact_svd_both_recover():
    W_P, merged = make_layers(48, 48, n=4, r=3, dtype=torch.float32)
    torch.manual_seed(1)
    fast = sd.spectral_detuning(merged[0], end_rank=3, n_iters=100, subspace=False)
    exact = sd.spectral_detuning(merged[0], end_rank=3, n_iters=100, svd="exact", subspace=False)
    assert sd.w_error(fast.W_star, W_P[0]) < -15 and sd.w_error(exact.W_star, W_P[0]) < -15
    assert torch.allclose(fast.W_star, exact.W_star, atol=1e-7)


def test_w_error_is_mean_of_log10_mse():
    W_P = torch.zeros(3, 4, 4)
    W_star = W_P.clone()
    W_star[0] += 1e-3  # MSE 1e-6
    W_star[1] += 1e-8  # MSE 1e-16
    W_star[2] += 1e-1  # MSE 1e-2
    assert sd.w_error(W_star, W_P) == pytest.approx((-6 - 16 - 2) / 3, abs=1e-5)
    assert sd.converged_share(W_star, W_P) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- the rank scheduler


def test_scheduler_doubles_after_16_flat_steps():
    sched = sd.IncreaseRankOnPlateau(n_iters=300, end_rank=16)
    trace = []
    for _ in range(120):
        trace.append(sched.curr_rank)
        sched.step(1.0)  # never strictly better after the first step
    assert changes(torch.tensor(trace)) == [(17, 2), (33, 4), (49, 8), (65, 16)]


def test_scheduler_improvement_resets_and_best_is_kept():
    # 5 improving steps, a flat stretch, one step below the best (resets the count), then flat again;
    # after the first doubling a loss equal to the old best is not an improvement (best is not reset)
    losses = [10, 9, 8, 7, 6] + [6.5] * 10 + [5.0] + [5.0] * 16 + [5.0] * 20
    sched = sd.IncreaseRankOnPlateau(n_iters=300, end_rank=8)
    trace = []
    for loss in losses:
        trace.append(sched.curr_rank)
        sched.step(loss)
    # bad steps: 10 (idx 5..14), reset at idx 15, then 16 bad at idx 16..31 → rank 2 from 32; next 16 → 48
    assert changes(torch.tensor(trace)) == [(32, 2), (48, 4)]


def test_scheduler_forces_end_rank_at_half():
    sched = sd.IncreaseRankOnPlateau(n_iters=40, end_rank=16)
    trace = []
    for it in range(40):
        trace.append(sched.curr_rank)
        sched.step(100.0 - it)  # always improving: the plateau rule never fires
    assert trace[:20] == [1] * 20 and trace[20:] == [16] * 20


def test_scheduler_step_is_pure_and_vectorised():
    state = sd.rank_scheduler_init(start_rank=1, n_layers=2)
    kw = {"n_iters": 300, "end_rank": 4}
    seqs = [[3.0] * 40, [3.0 - 0.01 * i for i in range(40)]]
    for it in range(40):
        new = sd.rank_scheduler_step(state, torch.tensor([seqs[0][it], seqs[1][it]]), **kw)
        assert new is not state and state.epoch == it  # the old state is untouched
        state = new
    assert state.rank.tolist() == [4, 1]
    single = sd.rank_scheduler_init(1)
    for loss in seqs[0]:
        single = sd.rank_scheduler_step(single, loss, **kw)
    assert int(single.rank) == 4


# ---------------------------------------------------------------- batched == the per-layer loop


def test_batched_equals_loop_with_exact_svd():
    _, merged = make_layers(40, 56, n=3, r=2, n_layers=2, seed=3)
    kw = {"end_rank": 4, "n_iters": 60, "svd": "exact"}
    plain = sd.spectral_detuning_layers(merged, subspace=False, **kw)
    sub = sd.spectral_detuning_layers(merged, subspace=True, **kw)
    assert sub.subspace and not plain.subspace
    for layer in range(2):
        ref = sd.spectral_detuning_loop(merged[layer], **kw)
        for res in (plain, sub):
            assert torch.equal(res.rank[:, layer], ref.rank)
            torch.testing.assert_close(res.W_star[layer], ref.W_star, atol=1e-12, rtol=0)
            torch.testing.assert_close(res.loss[:, layer], ref.loss, atol=1e-14, rtol=1e-6)


def test_layers_keep_their_own_rank():
    # layer 0 has rank-1 LoRAs, layer 1 rank-4: their schedules differ, so some iterations hold two ranks
    W_P, merged = make_layers(32, 32, n=3, r=None, n_layers=2, ranks=[1, 4], seed=5, dtype=torch.float32)
    kw = {"end_rank": 4, "n_iters": 200, "svd": "exact", "subspace": False}
    both = sd.spectral_detuning_layers(merged, **kw)
    assert (both.rank[:100, 0] != both.rank[:100, 1]).any()
    for layer in range(2):
        alone = sd.spectral_detuning(merged[layer], **kw)
        assert torch.equal(both.rank[:, layer], alone.rank)
        torch.testing.assert_close(both.W_star[layer], alone.W_star, atol=1e-7, rtol=0)
    assert sd.w_error(both.W_star, W_P) < -14


def test_lowrank_loop_reaches_the_floor_like_batched():
    W_P, merged = make_layers(48, 48, n=4, r=3, dtype=torch.float32, seed=2)
    torch.manual_seed(0)
    loop = sd.spectral_detuning_loop(merged[0], end_rank=3, n_iters=80)
    torch.manual_seed(0)
    batched = sd.spectral_detuning(merged[0], end_rank=3, n_iters=80)
    assert abs(sd.w_error(loop.W_star, W_P[0]) - sd.w_error(batched.W_star, W_P[0])) < 1.5
    assert sd.w_error(batched.W_star, W_P[0]) < -15


def subspace_tolerance(merged):
    """The documented acceptance bound of ``_subspace`` per layer: (4·eps)²·mean(W'²) + eps64²·(d_out+d_in)·mean(C²)."""
    W = merged.to(torch.float64)
    C = W - W.mean(1, keepdim=True)
    eps, eps64 = torch.finfo(merged.dtype).eps, torch.finfo(torch.float64).eps
    return (4 * eps) ** 2 * W.square().mean((1, 2, 3)) + eps64**2 * sum(merged.shape[2:]) * C.square().mean((1, 2, 3))


def with_noise(merged, amplitude, seed=11):
    """``merged`` plus full-rank Gaussian noise of rms ``amplitude·4·eps·rms(W')`` per layer (same dtype)."""
    f64 = torch.float64
    rms = merged.to(f64).square().mean((1, 2, 3)).sqrt()
    sigma = amplitude * 4 * torch.finfo(merged.dtype).eps * rms
    noise = torch.randn(merged.shape, generator=torch.Generator().manual_seed(seed), dtype=f64)
    return (merged.to(f64) + sigma.view(-1, 1, 1, 1) * noise).to(merged.dtype)


def subspace_offsets(merged, end_rank, threads):
    """``_subspace``'s per-layer mean squared residual under ``threads`` intra-op threads (None: rejected)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        out = sd._subspace(merged, end_rank)
    finally:
        torch.set_num_threads(old)
    return None if out is None else out[3]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case, accepted", [("exact", True), ("near_below", True), ("near_above", False),
                                            ("full_rank", False)])
def test_subspace_decision_does_not_depend_on_threads(dtype, case, accepted):
    _, merged = make_layers(64, 80, n=5, r=4, n_layers=2, dtype=dtype)
    if case == "near_below":  # residual ≈ 0.6–0.9 of the bound (measured)
        merged = with_noise(merged, 0.5)
    elif case == "near_above":  # residual ≈ 1.5–2.2 of the bound
        merged = with_noise(merged, 0.8)
    elif case == "full_rank":
        merged = merged + 1e-4 * torch.randn(merged.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    one, two = subspace_offsets(merged, 4, 1), subspace_offsets(merged, 4, 2)
    assert (one is not None) == (two is not None) == accepted
    if accepted:
        tol = subspace_tolerance(merged)
        # the residual is computed far more precisely than the bound: 1 and 2 threads agree closely
        torch.testing.assert_close(one, two, rtol=0.1, atol=0)
        if case == "exact":  # only the weights' own rounding is left: well inside the bound
            assert (one < 0.1 * tol).all(), (one / tol).tolist()
        else:  # really near the bound
            assert ((one > 0.3 * tol) & (one < tol)).all(), (one / tol).tolist()


def test_subspace_falls_back_when_differences_are_not_low_rank():
    W_P, merged = make_layers(40, 40, n=3, r=2, seed=4)
    noisy = merged + 1e-4 * torch.randn(merged.shape, generator=torch.Generator().manual_seed(9), dtype=merged.dtype)
    res = sd.spectral_detuning_layers(noisy, end_rank=2, n_iters=30, svd="exact")
    assert not res.subspace
    assert math.isfinite(sd.w_error(res.W_star, W_P))


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_give_one_line_errors():
    _, merged = make_layers(16, 12, n=3, r=2, dtype=torch.float32)
    one = merged[0]
    with pytest.raises(ValueError, match="at least 2 fine-tuned"):
        sd.spectral_detuning(one[:1], end_rank=2, n_iters=5)
    with pytest.raises(ValueError, match="above min"):
        sd.spectral_detuning(one, end_rank=13, n_iters=5)
    bad = one.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sd.spectral_detuning(bad, end_rank=2, n_iters=5)
    with pytest.raises(ValueError, match=r"one shape, got \[16, 12\] and \[16, 11\]"):
        sd.spectral_detuning([one[0], one[1], one[2][:, :11]], end_rank=2, n_iters=5)
    with pytest.raises(ValueError, match="svd must be"):
        sd.spectral_detuning(one, end_rank=2, n_iters=5, svd="full")
    with pytest.raises(ValueError, match="spectral_detuning_layers"):
        sd.spectral_detuning(merged, end_rank=2, n_iters=5)
    with pytest.raises(ValueError, match="differ in shape"):
        sd.w_error(one[0], one[0].T)
    with pytest.raises(TypeError, match="floating-point"):
        sd.spectral_detuning(one.to(torch.int64), end_rank=2, n_iters=5)


# ---------------------------------------------------------------- the step functions taught in notebook 05


def test_m_step_and_w_step_make_one_iteration_of_the_loop_reference():
    from labkit.methods.spectral_detuning import m_step, w_step

    g = torch.Generator().manual_seed(3)
    W_P = torch.randn(12, 9, generator=g, dtype=torch.float64)
    merged = W_P + torch.randn(4, 12, 2, generator=g, dtype=torch.float64) @ torch.randn(4, 2, 9, generator=g,
                                                                                         dtype=torch.float64)
    W = merged.mean(0)
    for _ in range(3):
        W = w_step(merged, m_step(merged, W, 2))
    ref = sd.spectral_detuning_loop(merged, end_rank=2, n_iters=3, start_rank=2, svd="exact")
    torch.testing.assert_close(W, ref.W_star)
    M = m_step(merged, W, 2)
    assert all(torch.linalg.matrix_rank(m) <= 2 for m in M)
    # batched over layers: same as one layer at a time
    two = torch.stack([merged, merged.flip(0)])
    torch.testing.assert_close(m_step(two, two.mean(1), 1)[1], m_step(merged.flip(0), merged.mean(0), 1))


def test_m_step_rejects_mismatched_shapes():
    from labkit.methods.spectral_detuning import m_step, w_step

    with pytest.raises(ValueError, match="W_star"):
        m_step(torch.zeros(3, 4, 5), torch.zeros(5, 4), 1)
    with pytest.raises(ValueError, match="differ in shape"):
        w_step(torch.zeros(3, 4, 5), torch.zeros(2, 4, 5))


def test_scheduler_rule_follows_increase_rank_on_plateau():
    from labkit.methods.spectral_detuning import scheduler_rule

    g = torch.Generator().manual_seed(0)
    losses = (1.0 + 0.01 * torch.randn(120, generator=g)).tolist()
    sched = sd.IncreaseRankOnPlateau(120, 8)
    rank, best, bad = 1, float("inf"), 0
    for epoch, loss in enumerate(losses, 1):
        rank, best, bad = scheduler_rule(rank, best, bad, loss, epoch, 120, 8)
        assert rank == sched.step(loss)
    assert rank == 8
    assert scheduler_rule(4, 0.5, 15, 0.7, 10, 300, 16) == (8, 0.5, 0)


def test_final_loss_is_the_mean_of_the_last_iterations():
    from labkit.methods.spectral_detuning import final_loss

    loss = torch.arange(20, dtype=torch.float64).reshape(10, 2)
    torch.testing.assert_close(final_loss(loss, 2), torch.tensor([17.0, 18.0], dtype=torch.float64))
