"""LoRA helpers over peft, and many LoRAs of one frozen base as one batched model (DESIGN §3, §10).

LoRA (Hu et al., 2021) adapts a frozen linear layer ``W0: [d_out, d_in]`` by a low-rank update::

    h = W0 x + b + scaling · B A x,      A: [r, d_in],  B: [d_out, r],  scaling = alpha / r

peft initialises ``A`` with ``kaiming_uniform_(a=sqrt(5))`` (uniform in ±1/sqrt(d_in)) and ``B = 0``.

``BatchedLoRA`` holds K such adapters for the same target layers of one frozen base module and trains them
together. The K models ride on the batch dimension: the base runs once on ``K·N`` inputs (model k owns rows
``k·N … k·N+N-1``) and at each target layer a forward hook adds ``scaling · (x_k A_kᵀ) B_kᵀ`` with ``torch.bmm``.
Any base whose samples do not interact inside a batch works (MLPs, transformers; not BatchNorm in training
mode). Adam is element-wise, so summing the K per-model losses gives every slice exactly the update it would
get if trained alone with peft (train with ``labkit.training.fit_stacked``) — the loop version in
``tests/test_lora.py`` checks this to ~1e-6.

Each slice is exported as a real peft adapter (``export_adapter``) that ``PeftModel.from_pretrained`` loads;
``lora_factors`` reads ``(A, B)`` back from a saved adapter's state dict (peft's file keys
``base_model.model.<name>.lora_A.weight`` / ``.lora_B.weight``).

Merging a saved adapter follows peft's ``merge_and_unload`` rules, in one place (``adapter_deltas``; the kit's
``labkit trees recover``, ``labkit detune`` and the zoo forests all use it): per module, ``r`` and ``alpha`` come
from ``rank_pattern`` / ``alpha_pattern`` with peft's own key rule (``peft.utils.other.get_pattern_key``: a key is a
regex that must match the whole module name or a dotted suffix of it), and ``scaling = alpha / r``, or
``alpha / sqrt(r)`` with ``use_rslora`` (Kalajdzievski, 2023). What it cannot merge (DoRA, another ``peft_type``,
``fan_in_fan_out``, conv LoRAs, extra trained tensors) is refused with one line naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from labkit.safe_io import printable, read_json
from labkit.tensor_files import read_safetensors

__all__ = ["BatchedLoRA", "adapter_deltas", "check_adapter_config", "lora_delta", "lora_factors",
           "merge_adapter", "peft_config", "read_adapter", "read_adapter_config", "scaled_factors", "target_regex"]

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


# ----------------------------------------------------------------------------------------- merging adapters

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _rank(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def check_adapter_config(config: object, where: str) -> dict:
    """``config`` (a parsed ``adapter_config.json``) if it describes a LoRA adapter :func:`adapter_deltas` can merge;
    else a one-line ``ValueError`` starting with ``where`` (the file).

    Needs a positive integer ``r``, a number ``lora_alpha``, ``rank_pattern`` / ``alpha_pattern`` (if present)
    objects of module-name patterns → positive integers / numbers; refuses DoRA (``use_dora``), a ``peft_type``
    other than ``LORA``, ``fan_in_fan_out`` (GPT-2's Conv1D stores ``W`` transposed) and ``lora_bias``."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a JSON object (peft's adapter config), got a {type(config).__name__}")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not _rank(r):
        raise ValueError(f"{where}: 'r' (the LoRA rank) must be a positive integer, got {printable(repr(r))}")
    if not _number(alpha):
        raise ValueError(f"{where}: 'lora_alpha' must be a number, got {printable(repr(alpha))}")
    for field, ok, what in (("rank_pattern", _rank, "positive integer ranks"), ("alpha_pattern", _number, "alphas")):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict) or not all(ok(v) for v in pattern.values()):
            raise ValueError(f"{where}: {field!r} must be an object of module names and {what}")
        for key in pattern:
            try:
                re.compile(key)
            except re.error as e:
                raise ValueError(f"{where}: the {field} key {printable(repr(key))} is not a regex ({e})") from None
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA" or config.get("use_dora"):
        raise ValueError(f"{where}: only plain LoRA adapters can be merged (peft_type {printable(repr(peft_type))}, "
                         f"use_dora={printable(config.get('use_dora'))})")
    if config.get("fan_in_fan_out"):
        raise ValueError(f"{where}: fan_in_fan_out adapters (GPT-2 Conv1D, W stored transposed) are not supported")
    if config.get("lora_bias"):
        raise ValueError(f"{where}: lora_bias adapters (a trained bias on lora_B) are not supported")
    return config


def read_adapter_config(path: Path) -> dict:
    """A peft ``adapter_config.json`` checked by :func:`check_adapter_config`; every error names the file."""
    return check_adapter_config(read_json(path, CONFIG_LIMIT, ADAPTER_CONFIG), printable(path))


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter_config, adapter state dict)`` of a peft adapter folder (``adapter_config.json`` +
    ``adapter_model.safetensors``; the older ``adapter_model.bin`` is a pickle and is not read)."""
    folder = Path(folder)
    config = read_adapter_config(folder / ADAPTER_CONFIG)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{printable(folder)} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS} (only "
                                "safetensors adapters are read)")
    return config, read_safetensors(weights)[0]


def _pattern_value(patterns: dict, module: str, default):
    """peft's per-module value (``peft.tuners.lora.LoraModel._create_and_replace`` with
    ``peft.utils.other.get_pattern_key``): the value of the first key ``K`` (in the config's order) for which
    ``re.match(rf"(.*\\.)?({K})$", module)`` holds, else of the key equal to ``module``, else ``default``.
    ``"fc1"`` matches ``blocks.0.fc1`` but not ``head_fc1``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return patterns.get(module, default)


def scaled_factors(config: dict, tensors: dict[str, torch.Tensor], where: str,
                   base_shapes: dict[str, tuple[int, ...]] | None = None
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module: (A [r, d_in], B [d_out, r], scaling)}`` of a saved peft LoRA adapter, with peft's merge rules:
    per-module ``r`` / ``alpha`` from ``rank_pattern`` / ``alpha_pattern`` (:func:`_pattern_value`) and
    ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), so ``ΔW = scaling · B A``.

    ``tensors``: the adapter state dict (``adapter_model.safetensors``); ``where``: the file, for errors.
    ``base_shapes`` (``{"<module>.weight": shape}``): when given, every adapted module must have a weight of shape
    ``[d_out, d_in]`` there. Refused with one ``ValueError`` line: what :func:`check_adapter_config` refuses, a
    tensor that is not a LoRA factor (DoRA magnitudes, ``modules_to_save`` copies, embedding LoRAs, biases), a
    factor that is not 2-D (conv LoRA) and a rank other than the config's."""
    check_adapter_config(config, where)
    try:
        factors = lora_factors(tensors)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    extra = [k for k in tensors if not _KEY.match(k)]
    if extra:
        raise ValueError(f"{where}: holds {len(extra)} tensor(s) that are not LoRA factors (e.g. "
                         f"{printable(extra[0])!r}); only plain LoRA on linear layers can be merged")
    out = {}
    for module, (A, B) in factors.items():
        if A.ndim != 2 or B.ndim != 2:
            raise ValueError(f"{where}: {printable(module)!r} is not a linear LoRA (lora_A {list(A.shape)}, lora_B "
                             f"{list(B.shape)}); only 2-D factors can be merged")
        r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        if A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{where}: {printable(module)!r} has factors of rank {A.shape[0]} / {B.shape[1]} but "
                             f"the config gives r = {r}")
        if base_shapes is not None:
            key = f"{module}.weight"
            if key not in base_shapes:
                raise ValueError(f"{where}: the adapter changes {printable(module)!r} but the base model has no 2-D "
                                 f"weight {printable(key)!r}")
            if tuple(base_shapes[key]) != (B.shape[0], A.shape[1]):
                raise ValueError(f"{where}: the LoRA update of {printable(module)!r} is [{B.shape[0]}, {A.shape[1]}] "
                                 f"but the base weight is {list(base_shapes[key])}")
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[module] = (A, B, float(scaling))
    return out


def adapter_deltas(config: dict, tensors: dict[str, torch.Tensor], where: str, dtype: torch.dtype = torch.float64,
                   base_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """``{module: ΔW [d_out, d_in]}`` of a saved peft LoRA adapter, exactly what ``merge_and_unload()`` adds to
    ``<module>.weight``; computed in ``dtype`` (:func:`scaled_factors` for the rules, errors and ``base_shapes``)."""
    return {module: lora_delta(A.to(dtype), B.to(dtype), scaling)
            for module, (A, B, scaling) in scaled_factors(config, tensors, where, base_shapes).items()}


def merge_adapter(base: dict[str, torch.Tensor], config: dict, tensors: dict[str, torch.Tensor],
                  where: str) -> dict[str, torch.Tensor]:
    """A copy of the state dict ``base`` with the adapter merged in: ``W ← W + ΔW`` in float64 for every adapted
    module (``base`` itself is not changed)."""
    shapes = {k: tuple(v.shape) for k, v in base.items() if v.ndim == 2}
    out = dict(base)
    for module, delta in adapter_deltas(config, tensors, where, base_shapes=shapes).items():
        key = f"{module}.weight"
        out[key] = out[key].double() + delta
    return out
