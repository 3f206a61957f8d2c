"""Batched training of many same-architecture models at once (DESIGN §3, §10; mini_jungle_notes.md).

K small models of one architecture train in ONE computation: their parameters are stacked (``[K, ...]``), the
forward pass is ``torch.func.vmap`` over ``torch.func.functional_call`` of one template module, the loss is the
sum of the per-model mean losses (so each slice gets exactly its own gradient) and one AdamW updates the stacked
tensors with per-model learning rates and weight decays (``[K]`` tensors)::

    m_k ← β1 m_k + (1−β1) g_k,   v_k ← β2 v_k + (1−β2) g_k²,
    θ_k ← θ_k (1 − lr_k·wd_k) − lr_k · m̂_k / (√v̂_k + ε)          (Loshchilov & Hutter, AdamW)

Every model draws its own mini-batches (and augmentation) from a generator seeded by its own seed, and stops
after its own number of epochs (later updates are masked), so model k's result does not depend on which other
models share its batch. ``fit_loop`` is the faithful one-at-a-time reference (``torch.optim.AdamW``, plain
module) that the tests compare against. ``fit_full_batch`` trains K models on one shared input against their own
targets (the SIREN zoo); ``fit_lora_batched`` trains the K adapters of a ``labkit.lora.BatchedLoRA`` the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

__all__ = [
    "BatchedAdamW",
    "Schedule",
    "augment_images",
    "batch_schedule",
    "batched_accuracy",
    "batched_logits",
    "fit_batched",
    "fit_full_batch",
    "fit_loop",
    "fit_lora_batched",
    "init_states",
    "stack_states",
    "unstack_state",
]

NOISE_BANK_SIZE = 1024
NOISE_STD = 0.1


# --------------------------------------------------------------------------------------- stacking helpers


def init_states(make_model: Callable[[], nn.Module], seeds: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """Parameters of ``make_model()`` built under ``torch.manual_seed(seed)`` for each seed (global RNG untouched)."""
    states = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = make_model()
        states.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return states


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K state dicts with equal keys and shapes → one dict of ``[K, ...]`` tensors."""
    if not states:
        raise ValueError("stack_states needs at least one state dict")
    keys = list(states[0])
    for i, s in enumerate(states):
        if list(s) != keys:
            raise ValueError(f"state {i} has keys {list(s)[:4]}…, expected {keys[:4]}…; stack one architecture only")
    return {k: torch.stack([s[k] for s in states]) for k in keys}


def unstack_state(stacked: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Slice ``k`` of a stacked state dict (cloned, contiguous, detached)."""
    return {name: v[k].detach().clone().contiguous() for name, v in stacked.items()}


# ----------------------------------------------------------------------------------------------- AdamW


class BatchedAdamW:
    """AdamW over stacked tensors ``[K, ...]`` with per-model ``lr: [K]`` and ``weight_decay: [K]``.

    ``step(grads, active)`` updates only the models where ``active: [K]`` is True; each model keeps its own step
    count for the bias corrections, so a masked model is exactly where it was after its last real step.
    Same arithmetic as ``torch.optim.AdamW`` (single-tensor path).
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        first = next(iter(params.values()))
        K = first.shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float32, device=first.device).reshape(K)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float32, device=first.device).reshape(K)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = torch.zeros(K, dtype=torch.float64, device=first.device)
        self.bind(params)

    def bind(self, params: dict[str, torch.Tensor]) -> None:
        """(Re)point the optimiser at ``params`` (e.g. one flat ``[K, P]`` view of all of them) with fresh moments."""
        self.params = params
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor | None = None) -> None:
        K = self.steps.shape[0]
        active = torch.ones(K, dtype=torch.bool, device=self.steps.device) if active is None else active
        on = active.float()
        self.steps += active.to(self.steps.dtype)
        t = self.steps.clamp(min=1)
        bc2_sqrt = ((1 - self.beta2 ** t) ** 0.5).float()
        # per-model coefficients; an inactive model gets the identity update (decay 1, weights 0, step 0)
        step_size = on * self.lr / (1 - self.beta1 ** t).float()
        decay = 1 - on * self.lr * self.weight_decay
        w1, w2 = on * (1 - self.beta1), on * (1 - self.beta2)
        b2 = 1 - w2
        for name, p in self.params.items():
            shape = (K,) + (1,) * (p.dim() - 1)
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            p.mul_(decay.view(shape))
            m.lerp_(g, w1.view(shape))
            v.mul_(b2.view(shape)).add_(g * g * w2.view(shape))
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
            p.sub_(m.div(denom).mul_(step_size.view(shape)))


# ---------------------------------------------------------------------------------- data order, augmentation


@dataclass
class Schedule:
    """One model's training stream: ``idx: [T, B]`` rows of X, and per-sample shift / noise draws ``[T, B]``."""

    idx: torch.Tensor
    dx: torch.Tensor
    dy: torch.Tensor
    noise_idx: torch.Tensor


def batch_schedule(subset: torch.Tensor, epochs: int, batch_size: int, seed: int) -> Schedule:
    """Shuffled mini-batches of ``subset`` (row indices) for ``epochs`` epochs, dropping each epoch's last partial
    batch, plus augmentation draws — all from ``torch.Generator().manual_seed(seed)``."""
    n = len(subset)
    if n < batch_size:
        raise ValueError(f"a model's training set has {n} rows, fewer than the batch size {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    per_epoch = n // batch_size
    rows = [subset[torch.randperm(n, generator=gen)[:per_epoch * batch_size]] for _ in range(epochs)]
    idx = torch.cat(rows).view(-1, batch_size) if rows else torch.zeros(0, batch_size, dtype=torch.long)
    T = idx.shape[0]
    dx = torch.randint(-1, 2, (T, batch_size), generator=gen)
    dy = torch.randint(-1, 2, (T, batch_size), generator=gen)
    noise_idx = torch.randint(0, NOISE_BANK_SIZE, (T, batch_size), generator=gen)
    return Schedule(idx, dx, dy, noise_idx)


@functools.lru_cache(maxsize=4)
def _noise_bank(dim: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return (NOISE_STD * torch.randn(NOISE_BANK_SIZE, dim, generator=gen)).to(device)


def augment_images(X: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, noise_idx: torch.Tensor,
                   shift: torch.Tensor, noise: torch.Tensor, side: int = 8) -> torch.Tensor:
    """Digit augmentation: random 1-pixel translation (the crop analogue) and additive pixel noise, clamped to [0, 1].

    ``X: [..., side²]``; ``dx, dy, noise_idx: [...]`` per-sample draws; ``shift, noise``: bool flags broadcastable
    to ``[...]`` (e.g. ``[K, 1]`` per model). Returns ``[..., side²]``.
    """
    batch = X.shape[:-1]
    img = nn.functional.pad(X.reshape(*batch, side, side), (1, 1, 1, 1))
    on = shift.expand(batch).long()
    ar = torch.arange(side, device=X.device)
    r = (ar + 1 + (dy * on)[..., None])[..., :, None].expand(*batch, side, side + 2)
    c = (ar + 1 + (dx * on)[..., None])[..., None, :].expand(*batch, side, side)
    out = img.gather(-2, r).gather(-1, c).reshape(*batch, side * side)
    bank = _noise_bank(side * side, X.device)
    out = out + bank[noise_idx] * noise.expand(batch)[..., None].to(X.dtype)
    return out.clamp(0, 1)


# ------------------------------------------------------------------------------------------ batched core


def _loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-model mean loss: ``out: [K, B, ...]`` → ``[K]``."""
    if kind == "ce":
        return nn.functional.cross_entropy(out.flatten(0, 1), target.flatten(0, 1), reduction="none") \
            .view(out.shape[:2]).mean(1)
    if kind == "mse":
        return (out - target.reshape(out.shape)).pow(2).flatten(1).mean(1)
    raise ValueError(f"unknown loss {kind!r}; use 'ce' or 'mse'")


def batched_logits(model: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor,
                   buffers: dict[str, torch.Tensor] | None = None, shared_input: bool = True) -> torch.Tensor:
    """Outputs of K models in one call: ``X: [N, ...]`` (shared) or ``[K, N, ...]`` → ``[K, N, ...]`` (eval mode)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return vmap(lambda p, b, x: functional_call(model, (p, b), (x,)),
                        in_dims=(0, 0, None if shared_input else 0))(params, buffers or {}, X)
    finally:
        model.train(was)


def batched_accuracy(model: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
                     mask: torch.Tensor | None = None, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``[K]`` accuracy of K classifiers on shared ``X: [N, ...]``, ``y: [N]``; ``mask: [K, N]`` bool picks each
    model's own evaluation rows (e.g. the test images of its chosen classes)."""
    correct = (batched_logits(model, params, X, buffers).argmax(-1) == y.to(X.device)).float()
    if mask is None:
        return correct.mean(1)
    mask = mask.float()
    return (correct * mask).sum(1) / mask.sum(1).clamp(min=1)


def _run(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
         batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n_steps: int,
         opt: BatchedAdamW, loss: str, shared_input: bool, rng_seed: int, progress: str | None) -> torch.Tensor:
    """The batched loop; returns the last per-model loss ``[K]``."""
    from tqdm.auto import tqdm

    K = next(iter(params.values())).shape[0]
    names, shapes = list(params), [v.shape[1:] for v in params.values()]
    sizes = [v[0].numel() for v in params.values()]
    flat = torch.cat([v.detach().reshape(K, -1) for v in params.values()], dim=1).requires_grad_(True)  # [K, P]
    opt.bind({"flat": flat.detach()})

    def forward(p, b, x):
        return functional_call(model, (p, b), (x,))

    fwd = vmap(forward, in_dims=(0, 0, None if shared_input else 0), randomness="different")
    last = torch.full((K,), float("nan"))
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout draws come from this seed, the caller's RNG is untouched
        torch.manual_seed(rng_seed)
        for t in tqdm(range(n_steps), desc=progress, disable=progress is None, leave=False):
            x, target, active = batch_fn(t)
            views = {n: c.view(K, *s) for n, c, s in zip(names, flat.split(sizes, dim=1), shapes)}
            per_model = _loss(loss, fwd(views, buffers, x), target)
            (grad,) = torch.autograd.grad((per_model * active).sum(), [flat])
            opt.step({"flat": grad}, active)
            last = torch.where(active.cpu(), per_model.detach().cpu(), last)
    model.eval()
    with torch.no_grad():
        for v, c in zip(params.values(), flat.detach().split(sizes, dim=1)):
            v.copy_(c.reshape(v.shape))
    return last


def _stream(X: torch.Tensor, Y: torch.Tensor, subsets, epochs, seeds, K: int, batch_size: int, shift, noise):
    """``(batch_fn, T)``: ``batch_fn(t) -> (x [K, B, 64], target [K, B, ...], active [K])`` over T steps."""
    device = X.device
    for name, val in (("subsets", subsets), ("epochs", epochs), ("seeds", seeds)):
        if len(val) != K:
            raise ValueError(f"{name} has {len(val)} entries but there are {K} models")
    scheds = [batch_schedule(s, e, batch_size, sd) for s, e, sd in zip(subsets, epochs, seeds)]
    lengths = torch.tensor([s.idx.shape[0] for s in scheds])
    T = int(lengths.max()) if K else 0

    def pad(field):
        out = torch.zeros(K, T, batch_size, dtype=torch.long)
        for k, s in enumerate(scheds):
            out[k, :lengths[k]] = getattr(s, field)
        return out.to(device)

    idx, dx, dy, nidx = pad("idx"), pad("dx"), pad("dy"), pad("noise_idx")
    active_all = (torch.arange(T)[None, :] < lengths[:, None]).to(device)  # [K, T]
    flag = lambda f: torch.as_tensor([bool(v) for v in (f or [False] * K)], device=device)[:, None]  # noqa: E731
    shift_f, noise_f = flag(shift), flag(noise)

    def batch_fn(t):
        rows = idx[:, t]  # [K, B]
        x = augment_images(X[rows], dx[:, t], dy[:, t], nidx[:, t], shift_f, noise_f)
        return x, Y[rows], active_all[:, t]

    return batch_fn, T


def fit_batched(model: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor,
                subsets: Sequence[torch.Tensor], *, epochs: Sequence[int], lr: Sequence[float],
                weight_decay: Sequence[float], seeds: Sequence[int], batch_size: int = 32,
                shift: Sequence[bool] | None = None, noise: Sequence[bool] | None = None, loss: str = "ce",
                buffers: dict[str, torch.Tensor] | None = None, rng_seed: int = 0,
                progress: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Train K models of ``model``'s architecture together, each on its own rows of one data set.

    ``params``: stacked ``[K, ...]`` (updated in place and returned); ``X: [N, 64]`` images in [0, 1];
    ``Y: [N]`` labels (``loss="ce"``) or ``[N, ...]`` targets (``"mse"``); ``subsets[k]``: model k's row indices;
    per-model ``epochs, lr, weight_decay, seeds`` and augmentation flags ``shift, noise`` (length K);
    ``buffers``: stacked per-model buffers (e.g. ``drop_p: [K]``). Returns ``(params, last loss [K])``.
    """
    K = next(iter(params.values())).shape[0]
    batch_fn, T = _stream(X, Y, subsets, epochs, seeds, K, batch_size, shift, noise)
    for name, val in (("lr", lr), ("weight_decay", weight_decay)):
        if len(val) != K:
            raise ValueError(f"{name} has {len(val)} entries but there are {K} stacked models")
    opt = BatchedAdamW(params, torch.tensor(lr), torch.tensor(weight_decay))
    last = _run(model, params, buffers or {}, batch_fn, T, opt, loss, False, rng_seed, progress)
    return params, last


def fit_lora_batched(lora, X: torch.Tensor, Y: torch.Tensor, subsets: Sequence[torch.Tensor], *,
                     epochs: Sequence[int], lr: Sequence[float], weight_decay: Sequence[float], seeds: Sequence[int],
                     batch_size: int = 32, shift: Sequence[bool] | None = None, noise: Sequence[bool] | None = None,
                     progress: str | None = None) -> torch.Tensor:
    """Train the K adapters of a ``labkit.lora.BatchedLoRA`` (frozen base) like ``fit_batched`` trains full
    models: own data rows, batches, augmentation, epochs, lr and weight decay per adapter (AdamW on the stacked
    ``A: [K, r, d_in]``, ``B: [K, d_out, r]``; cross-entropy). Returns the last per-adapter loss ``[K]``."""
    from tqdm.auto import tqdm

    K = lora.n_adapters
    batch_fn, T = _stream(X, Y, subsets, epochs, seeds, K, batch_size, shift, noise)
    params = {f"A{i}": a for i, a in enumerate(lora.A)} | {f"B{i}": b for i, b in enumerate(lora.B)}
    opt = BatchedAdamW({k: v.data for k, v in params.items()}, torch.tensor(lr), torch.tensor(weight_decay))
    last = torch.full((K,), float("nan"))
    lora.base.eval()
    for t in tqdm(range(T), desc=progress, disable=progress is None, leave=False):
        x, target, active = batch_fn(t)
        per_model = _loss("ce", lora(x), target)
        grads = torch.autograd.grad((per_model * active).sum(), list(params.values()))
        opt.step(dict(zip(params, grads)), active)
        last = torch.where(active.cpu(), per_model.detach().cpu(), last)
    return last


def fit_full_batch(model: nn.Module, params: dict[str, torch.Tensor], inputs: torch.Tensor,
                   targets: torch.Tensor, *, steps: int, lr: float | Sequence[float], weight_decay: float = 0.0,
                   loss: str = "mse", progress: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Full-batch training of K models on a shared input ``inputs: [P, ...]`` against their own
    ``targets: [K, P, ...]`` (e.g. K SIRENs on one pixel grid, one image each). Returns ``(params, loss [K])``."""
    K = targets.shape[0]
    lr_t = torch.as_tensor(lr, dtype=torch.float32).expand(K).clone()
    opt = BatchedAdamW(params, lr_t, torch.full((K,), float(weight_decay)))
    on = torch.ones(K, dtype=torch.bool, device=targets.device)
    _run(model, params, {}, lambda t: (inputs, targets, on), steps, opt, loss, True, 0, progress)
    with torch.no_grad():
        final = _loss(loss, batched_logits(model, params, inputs), targets)
    return params, final.cpu()


# ------------------------------------------------------------------------------------- reference loop


def fit_loop(model: nn.Module, state: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor,
             subset: torch.Tensor, *, epochs: int, lr: float, weight_decay: float, seed: int, batch_size: int = 32,
             shift: bool = False, noise: bool = False, loss: str = "ce") -> dict[str, torch.Tensor]:
    """The faithful one-model reference of ``fit_batched``: same batches and augmentation, ``torch.optim.AdamW``.

    Loads ``state`` into ``model`` (in place) and returns the trained parameters (cloned).
    """
    model.load_state_dict(state, strict=False)
    sched = batch_schedule(subset, epochs, batch_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    flags = torch.tensor(bool(shift)), torch.tensor(bool(noise))
    model.train()
    for t in range(sched.idx.shape[0]):
        rows = sched.idx[t].to(X.device)
        x = augment_images(X[rows], sched.dx[t].to(X.device), sched.dy[t].to(X.device),
                           sched.noise_idx[t].to(X.device), *[f.to(X.device) for f in flags])
        target = Y[rows]
        out = model(x)
        value = _loss(loss, out[None], target[None])[0]
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.named_parameters()}
