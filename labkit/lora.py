"""LoRA helpers over peft, and a batched trainer for many LoRAs of one frozen base (DESIGN §3, §10).

LoRA (Hu et al., 2021) adapts a frozen linear layer ``W0: [d_out, d_in]`` by a low-rank update::

    h = W0 x + b + scaling · B A x,      A: [r, d_in],  B: [d_out, r],  scaling = alpha / r

peft initialises ``A`` with ``kaiming_uniform_(a=sqrt(5))`` (uniform in ±1/sqrt(d_in)) and ``B = 0``.

``BatchedLoRA`` holds K such adapters for the same target layers of one frozen base module and trains them
together. The K models ride on the batch dimension: the base runs once on ``K·N`` inputs (model k owns rows
``k·N … k·N+N-1``) and at each target layer a forward hook adds ``scaling · (x_k A_kᵀ) B_kᵀ`` with ``torch.bmm``.
Any base whose samples do not interact inside a batch works (MLPs, transformers; not BatchNorm in training
mode). Adam is element-wise, so summing the K per-model losses gives every slice exactly the update it would
get if trained alone with peft — the loop version in ``tests/test_lora.py`` checks this to ~1e-6.

Each slice is exported as a real peft adapter (``export_adapter``) that ``PeftModel.from_pretrained`` loads;
``lora_factors`` reads ``(A, B)`` back from a saved adapter's state dict (peft's file keys
``base_model.model.<name>.lora_A.weight`` / ``.lora_B.weight``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from labkit.safe_io import printable, read_json

__all__ = ["BatchedLoRA", "fit_batched", "lora_delta", "lora_factors", "peft_config", "read_adapter_config",
           "target_regex"]

CONFIG_LIMIT = 1 << 20  # an adapter_config.json larger than 1 MiB is not one


def target_regex(targets: Sequence[str]) -> str:
    """A full-match regex for exactly these module names, e.g. ``inp|blocks\\.0\\.fc1``.

    peft matches a list entry also as a name suffix and writes a list to ``adapter_config.json`` in set order
    (which changes from process to process); a regex matches exactly and is written verbatim.
    """
    return "|".join(re.escape(t) for t in targets)


def peft_config(targets: Sequence[str], r: int, alpha: float):
    """The ``peft.LoraConfig`` matching a ``BatchedLoRA`` (no dropout, default init, no bias)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_regex(targets), bias="none")


class BatchedLoRA(nn.Module):
    """K LoRA adapters on the same target ``nn.Linear`` layers of one frozen ``base``.

    ``A[i]: [K, r, d_in]`` and ``B[i]: [K, d_out, r]`` for target ``targets[i]``. Slice k's ``A`` is drawn from
    its own generator seeded with ``seeds[k]`` (targets in the given order), so an adapter's init depends only on
    its seed, never on which other adapters share the batch.
    """

    def __init__(self, base: nn.Module, targets: Sequence[str], seeds: Sequence[int], r: int = 8,
                 alpha: float = 8.0):
        super().__init__()
        modules = dict(base.named_modules())
        missing = [t for t in targets if t not in modules]
        if missing:
            raise ValueError(f"target layers {missing} are not modules of the base; "
                             f"some names it has: {list(modules)[1:8]}")
        wrong = [t for t in targets if not isinstance(modules[t], nn.Linear)]
        if wrong:
            raise TypeError(f"BatchedLoRA adapts nn.Linear layers only; {wrong} are not nn.Linear")
        if len(seeds) == 0:
            raise ValueError("BatchedLoRA needs at least one seed (one adapter per seed)")
        self.base = base.requires_grad_(False)
        self.targets = list(targets)
        self.seeds = [int(s) for s in seeds]
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / self.r
        K = len(self.seeds)
        weight = modules[self.targets[0]].weight
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        for name in self.targets:
            d_out, d_in = modules[name].weight.shape
            bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on [r, d_in]
            A = torch.stack([(torch.rand(self.r, d_in, generator=g) * 2 - 1) * bound for g in gens])
            self.A.append(nn.Parameter(A.to(device=weight.device, dtype=weight.dtype)))
            self.B.append(nn.Parameter(torch.zeros(K, d_out, self.r, device=weight.device, dtype=weight.dtype)))

    @property
    def n_adapters(self) -> int:
        return len(self.seeds)

    # -- forward ---------------------------------------------------------------------------------------------

    def _hook(self, i: int):
        K = self.n_adapters

        def hook(module, args, out):
            x = args[0]
            if x.shape[0] % K:
                raise ValueError(f"BatchedLoRA with {K} adapters needs a batch of K·N rows; got {x.shape[0]}")
            xk = x.reshape(K, -1, x.shape[-1])  # [K, N·…, d_in]: model k's rows are contiguous
            delta = torch.bmm(torch.bmm(xk, self.A[i].transpose(1, 2)), self.B[i].transpose(1, 2))
            return out + self.scaling * delta.reshape(out.shape)

        return hook

    @contextlib.contextmanager
    def attached(self):
        """Inside this block ``base(x)`` with ``x: [K·N, …]`` computes all K adapted models at once."""
        modules = dict(self.base.named_modules())
        handles = [modules[name].register_forward_hook(self._hook(i)) for i, name in enumerate(self.targets)]
        try:
            yield self.base
        finally:
            for h in handles:
                h.remove()

    def forward(self, *args, **kwargs):
        """Tensor arguments ``[K, N, …]`` → base on ``[K·N, …]`` → a tensor output is returned as ``[K, N, …]``."""
        K = self.n_adapters

        def flat(a):
            if isinstance(a, torch.Tensor) and a.dim() >= 1:
                if a.shape[0] != K:
                    raise ValueError(f"expected inputs with a leading dimension of {K} adapters, got {list(a.shape)}")
                return a.reshape(-1, *a.shape[2:])
            return a

        n = next(a.shape[1] for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() >= 2)
        with self.attached():
            out = self.base(*[flat(a) for a in args], **{k: flat(v) for k, v in kwargs.items()})
        return out.reshape(K, n, *out.shape[1:]) if isinstance(out, torch.Tensor) else out

    # -- export ------------------------------------------------------------------------------------------------

    def factors(self, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (A [r, d_in], B [d_out, r])}`` of adapter ``k`` (detached copies)."""
        return {name: (self.A[i][k].detach().clone(), self.B[i][k].detach().clone())
                for i, name in enumerate(self.targets)}

    def peft_model(self, model_card: bool = False):
        """A fresh ``PeftModel`` around a deep copy of the base, with these targets, rank and alpha.

        ``model_card=False`` makes its ``save_pretrained`` skip peft's README.md, which takes ~70 ms of Jinja
        templating per adapter (80 % of the time to save a small adapter) and which ``ZooStore`` deletes anyway.
        """
        from peft import get_peft_model

        model = get_peft_model(copy.deepcopy(self.base), peft_config(self.targets, self.r, self.alpha))
        if not model_card:
            model.create_or_update_model_card = lambda output_dir: None
        wrapped = sorted(n[:-len(".lora_A.default.weight")] for n, _ in model.named_parameters()
                         if n.endswith(".lora_A.default.weight"))
        expected = sorted(f"base_model.model.{t}" for t in self.targets)
        if wrapped != expected:
            raise ValueError(f"peft adapted {wrapped}, not exactly the targets {expected}; use full module names")
        return model

    @torch.no_grad()
    def export_adapter(self, k: int, peft_model=None):
        """Write adapter ``k`` into ``peft_model`` (made with ``peft_model()`` when None) and return it.

        Reuse one ``peft_model`` for many exports: each call overwrites every LoRA factor.
        """
        if not 0 <= k < self.n_adapters:
            raise IndexError(f"adapter {k} out of range: this BatchedLoRA holds {self.n_adapters}")
        model = self.peft_model() if peft_model is None else peft_model
        params = dict(model.named_parameters())
        for i, name in enumerate(self.targets):
            params[f"base_model.model.{name}.lora_A.default.weight"].copy_(self.A[i][k])
            params[f"base_model.model.{name}.lora_B.default.weight"].copy_(self.B[i][k])
        return model


def fit_batched(lora: BatchedLoRA, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
                weight_decay: float = 0.0, progress: bool | str = False) -> torch.Tensor:
    """Train all adapters with one Adam(W) over the stacked factors.

    ``loss_fn(step) -> [K]`` per-adapter losses; their sum is minimised, which gives each slice the same update
    as training it alone. Returns the loss history ``[steps, K]``.
    """
    from tqdm.auto import tqdm

    params = [*lora.A, *lora.B]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam(params, lr=lr))
    history = torch.empty(steps, lora.n_adapters)
    bar = tqdm(range(steps), desc=progress if isinstance(progress, str) else "LoRA steps", disable=not progress,
               leave=False)
    for step in bar:
        losses = loss_fn(step)
        if losses.shape != (lora.n_adapters,):
            raise ValueError(f"loss_fn must return one loss per adapter, shape [{lora.n_adapters}], "
                             f"got {list(losses.shape)}")
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        history[step] = losses.detach().cpu()
    return history


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def lora_factors(adapter_state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (A [r, d_in], B [d_out, r])}`` from a peft adapter state dict (file keys or ``.default`` keys)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapter_state_dict.items():
        m = _KEY.match(key)
        if m:
            parts.setdefault(m["layer"], {})[m["ab"]] = value
    if not parts:
        raise ValueError(f"no LoRA factors found; expected keys like 'base_model.model.fc1.lora_A.weight', "
                         f"got {list(adapter_state_dict)[:3]}")
    broken = [layer for layer, ab in parts.items() if set(ab) != {"A", "B"}]
    if broken:
        raise ValueError(f"layers {broken} have only one of lora_A / lora_B")
    return {layer: (ab["A"], ab["B"]) for layer, ab in sorted(parts.items())}


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The weight update ``ΔW = scaling · B A``: ``A: [..., r, d_in]``, ``B: [..., d_out, r]`` → ``[..., d_out, d_in]``."""
    return scaling * (B @ A)


def read_adapter_config(path: Path) -> dict:
    """A peft ``adapter_config.json``: a JSON object with a positive integer ``r`` and a number ``lora_alpha``
    (and ``alpha_pattern`` an object, if present); every error names the file."""
    config = read_json(path, CONFIG_LIMIT, "adapter_config.json")
    name = printable(path)
    if not isinstance(config, dict):
        raise ValueError(f"{name} must be a JSON object (peft's adapter config), got a {type(config).__name__}")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{name}: 'r' (the LoRA rank) must be a positive integer, got {printable(repr(r))}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"{name}: 'lora_alpha' must be a number, got {printable(repr(alpha))}")
    if not isinstance(config.get("alpha_pattern") or {}, dict):
        raise ValueError(f"{name}: 'alpha_pattern' must be an object of module names and alphas")
    return config
