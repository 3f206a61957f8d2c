"""Training many same-architecture models at once, and the one-model loops they are checked against (DESIGN §3, §10).

K models train in ONE computation: their parameters are stacked (``[K, ...]``), the loss is the sum of the K
per-model losses (so each slice gets exactly its own gradient) and one optimiser step updates the stacked tensors.
The core is ``fit_stacked``: each step ``loss_fn(step) -> [K]``, optionally masked by ``active: [steps, K]``, with

* ``BatchedAdamW`` — per-model learning rates and weight decays (``[K]`` tensors); a masked model does not move::

      m_k ← β1 m_k + (1−β1) g_k,   v_k ← β2 v_k + (1−β2) g_k²,
      θ_k ← θ_k (1 − lr_k·wd_k) − lr_k · m̂_k / (√v̂_k + ε)          (Loshchilov & Hutter, AdamW)

* or any ``torch.optim`` optimiser over the same tensors (one learning rate for all; no masking).

It returns the loss history ``[steps, K]``. Built on it:

* ``fit_batched`` — K copies of one ``nn.Module`` (``torch.func.vmap`` over ``functional_call``), each on its own
  mini-batches, augmentation and number of epochs of one digit data set (``labkit.digit_batches``);
* ``fit_full_batch`` — K models on one shared input against their own targets (the SIREN zoo);
* ``fit_lora_batched`` — the K adapters of a ``labkit.lora.BatchedLoRA`` on digit mini-batches.

Recipes with their own objective call ``fit_stacked`` directly (the digit-diffusion LoRAs, the MiniLM adapters).

One-model reference loops: ``fit_loop`` (the faithful one-at-a-time ``fit_batched``, ``torch.optim.AdamW`` on a
plain module; tests and benchmarks) and ``fit_classifier`` / ``accuracy`` (Adam or AdamW on shuffled mini-batches;
notebook 00 and the kurtosis experiment, ``labkit.kurtosis_runs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from labkit.digit_batches import augment_images, batch_schedule, digit_stream

__all__ = [
    "BatchedAdamW",
    "accuracy",
    "batched_accuracy",
    "batched_logits",
    "fit_batched",
    "fit_classifier",
    "fit_full_batch",
    "fit_loop",
    "fit_lora_batched",
    "fit_stacked",
    "init_states",
    "last_losses",
    "lora_parameters",
    "stack_states",
    "unstack_state",
]


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
    """K state dicts with equal keys and shapes → one dict of ``[K, ...]`` tensors (``ValueError`` otherwise)."""
    if not states:
        raise ValueError("stack_states needs at least one state dict")
    first = states[0]
    keys = list(first)
    for i, s in enumerate(states):
        if list(s) != keys or any(s[k].shape != first[k].shape for k in keys):
            raise ValueError(f"model {i} has other parameter names or shapes than model 0 ({keys[:4]}…); these "
                             "models have different architectures and cannot be stacked")
    return {k: torch.stack([s[k] for s in states]) for k in keys}


def unstack_state(stacked: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Slice ``k`` of a stacked state dict (cloned, contiguous, detached)."""
    return {name: v[k].detach().clone().contiguous() for name, v in stacked.items()}


def lora_parameters(lora) -> dict[str, nn.Parameter]:
    """The trainable stacked factors of a ``labkit.lora.BatchedLoRA``: ``A{i}: [K, r, d_in]``, ``B{i}: [K, d_out, r]``."""
    return {f"A{i}": a for i, a in enumerate(lora.A)} | {f"B{i}": b for i, b in enumerate(lora.B)}


# ----------------------------------------------------------------------------------------------- AdamW


class BatchedAdamW:
    """AdamW over stacked tensors ``[K, ...]`` with per-model ``lr: [K]`` and ``weight_decay: [K]``.

    ``step(grads, active)`` updates ``params`` in place, only the models where ``active: [K]`` is True; each
    model keeps its own step count for the bias corrections, so a masked model is exactly where it was after its
    last real step. Same arithmetic as ``torch.optim.AdamW`` (single-tensor path).
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        first = next(iter(params.values()))
        K = first.shape[0]
        self.params = params
        self.lr = torch.as_tensor(lr, dtype=torch.float32, device=first.device).reshape(K)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float32, device=first.device).reshape(K)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = torch.zeros(K, dtype=torch.float64, device=first.device)
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


# ------------------------------------------------------------------------------------------------ the core


def fit_stacked(params: dict[str, torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int,
                optimizer: BatchedAdamW | torch.optim.Optimizer, *, active: torch.Tensor | None = None,
                progress: str | None = None) -> torch.Tensor:
    """Minimise the sum of K per-model losses over stacked tensors; returns the loss history ``[steps, K]``.

    ``params``: the leaf tensors ``[K, ...]`` (requiring grad) that ``loss_fn(step) -> [K]`` depends on and that
    ``optimizer`` updates in place: a ``BatchedAdamW`` over this same dict, or a ``torch.optim`` optimiser over
    exactly these tensors. ``active: [steps, K]`` bool masks models out of a step (``BatchedAdamW`` only); a masked
    model's loss is still computed and recorded. ``progress`` is a progress-bar title (None: no bar).
    """
    from tqdm.auto import tqdm

    leaves = list(params.values())
    K = leaves[0].shape[0]
    if active is not None and tuple(active.shape) != (steps, K):
        raise ValueError(f"active must be [steps, K] = [{steps}, {K}], got {list(active.shape)}")
    if isinstance(optimizer, torch.optim.Optimizer):
        if active is not None:
            raise ValueError("masking models out of steps (active) needs BatchedAdamW; torch optimisers update all")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in leaves}:
            raise ValueError("the torch optimiser must hold exactly the tensors of params")
    elif optimizer.params is not params:
        raise ValueError("BatchedAdamW must be made over the same params dict that fit_stacked trains")
    history = torch.empty(steps, K)
    for step in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
        losses = loss_fn(step)
        if losses.shape != (K,):
            raise ValueError(f"loss_fn must return one loss per model, shape [{K}], got {list(losses.shape)}")
        on = None if active is None else active[step]
        grads = torch.autograd.grad(losses.sum() if on is None else (losses * on).sum(), leaves)
        if isinstance(optimizer, torch.optim.Optimizer):
            for p, g in zip(leaves, grads):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step(dict(zip(params, grads)), on)
        history[step] = losses.detach().cpu()
    return history


def last_losses(history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[K]``: model k's loss at its last step ``lengths[k] - 1`` of ``history: [steps, K]`` (NaN if it had none)."""
    return torch.tensor([history[n - 1, k].item() if n else float("nan") for k, n in enumerate(lengths.tolist())])


# -------------------------------------------------------------------------------------- functional models


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


def _fit_functional(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: torch.Tensor,
                    weight_decay: torch.Tensor, loss: str, shared_input: bool, rng_seed: int,
                    active: torch.Tensor | None, progress: str | None) -> torch.Tensor:
    """``fit_stacked`` on K functional copies of ``model``: all parameters as one ``[K, P]`` tensor, dropout drawn
    from ``rng_seed`` (the caller's RNG untouched); ``params`` updated in place. Returns the history ``[steps, K]``."""
    K = next(iter(params.values())).shape[0]
    names, shapes = list(params), [v.shape[1:] for v in params.values()]
    sizes = [v[0].numel() for v in params.values()]
    flat = torch.cat([v.detach().reshape(K, -1) for v in params.values()], dim=1).requires_grad_(True)  # [K, P]
    stacked = {"flat": flat}
    opt = BatchedAdamW(stacked, lr, weight_decay)
    fwd = vmap(lambda p, b, x: functional_call(model, (p, b), (x,)), in_dims=(0, 0, None if shared_input else 0),
               randomness="different")

    def loss_fn(t: int) -> torch.Tensor:
        x, target = batch(t)
        views = {n: c.view(K, *s) for n, c, s in zip(names, flat.split(sizes, dim=1), shapes)}
        return _loss(loss, fwd(views, buffers, x), target)

    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        history = fit_stacked(stacked, loss_fn, steps, opt, active=active, progress=progress)
    model.eval()
    with torch.no_grad():
        for v, c in zip(params.values(), flat.detach().split(sizes, dim=1)):
            v.copy_(c.reshape(v.shape))
    return history


def _per_model(K: int, **values: Sequence) -> None:
    for name, val in values.items():
        if len(val) != K:
            raise ValueError(f"{name} has {len(val)} entries but there are {K} models")


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
    _per_model(K, subsets=subsets, lr=lr, weight_decay=weight_decay)
    stream = digit_stream(X, Y, subsets, epochs, seeds, batch_size, shift, noise)
    history = _fit_functional(model, params, buffers or {}, stream.batch, stream.steps, torch.tensor(lr),
                              torch.tensor(weight_decay), loss, False, rng_seed, stream.active, progress)
    return params, last_losses(history, stream.lengths)


def fit_full_batch(model: nn.Module, params: dict[str, torch.Tensor], inputs: torch.Tensor,
                   targets: torch.Tensor, *, steps: int, lr: float | Sequence[float], weight_decay: float = 0.0,
                   loss: str = "mse", progress: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Full-batch training of K models on a shared input ``inputs: [P, ...]`` against their own
    ``targets: [K, P, ...]`` (e.g. K SIRENs on one pixel grid, one image each). Returns ``(params, loss [K])``
    with the loss of the trained models."""
    K = targets.shape[0]
    lr_t = torch.as_tensor(lr, dtype=torch.float32).expand(K).clone()
    _fit_functional(model, params, {}, lambda t: (inputs, targets), steps, lr_t, torch.full((K,), float(weight_decay)),
                    loss, True, 0, None, progress)
    with torch.no_grad():
        final = _loss(loss, batched_logits(model, params, inputs), targets)
    return params, final.cpu()


def fit_lora_batched(lora, X: torch.Tensor, Y: torch.Tensor, subsets: Sequence[torch.Tensor], *,
                     epochs: Sequence[int], lr: Sequence[float], weight_decay: Sequence[float], seeds: Sequence[int],
                     batch_size: int = 32, shift: Sequence[bool] | None = None, noise: Sequence[bool] | None = None,
                     progress: str | None = None) -> torch.Tensor:
    """Train the K adapters of a ``labkit.lora.BatchedLoRA`` (frozen base) like ``fit_batched`` trains full
    models: own data rows, batches, augmentation, epochs, lr and weight decay per adapter (AdamW on the stacked
    ``A: [K, r, d_in]``, ``B: [K, d_out, r]``; cross-entropy). Returns the last per-adapter loss ``[K]``."""
    K = lora.n_adapters
    _per_model(K, subsets=subsets, lr=lr, weight_decay=weight_decay)
    stream = digit_stream(X, Y, subsets, epochs, seeds, batch_size, shift, noise)
    params = lora_parameters(lora)
    opt = BatchedAdamW(params, torch.tensor(lr), torch.tensor(weight_decay))
    lora.base.eval()

    def loss_fn(t: int) -> torch.Tensor:
        x, target = stream.batch(t)
        return _loss("ce", lora(x), target)

    history = fit_stacked(params, loss_fn, stream.steps, opt, active=stream.active, progress=progress)
    return last_losses(history, stream.lengths)


# ------------------------------------------------------------------------------------- one-model references


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


def fit_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 20, lr: float = 3e-3,
                   batch_size: int = 64, weight_decay: float = 0.0, decoupled: bool = False, seed: int = 0,
                   after_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Adam on cross-entropy with shuffled mini-batches (``torch.optim.AdamW`` when ``decoupled``: weight decay
    applied to the weights, not added to the gradient). ``X: [N, ...]``, ``y: [N]``; ``after_epoch(epoch)`` is
    called after each epoch (e.g. to snapshot the weights); returns the loss per epoch."""
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    device = next(model.parameters()).device
    X, y = X.to(device), y.to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(X), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(X))
        if after_epoch is not None:
            after_epoch(epoch)
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows of ``X`` whose arg-max logit equals ``y``."""
    device = next(model.parameters()).device
    return (model(X.to(device)).argmax(-1).cpu() == y.cpu()).float().mean().item()
