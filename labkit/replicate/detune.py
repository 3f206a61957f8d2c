"""``labkit detune``: Spectral DeTuning on LoWRA Bench, or on your own fine-tuned checkpoints.

Horwitz, Kahana & Hoshen, ICML 2024 (arXiv 2402.10208); method in ``labkit.methods.spectral_detuning``,
format and protocol in reference/spectral_detuning.md §2–§6.

* ``detune_lowra(root, subset, …)`` — the paper's replication. Reads a LoWRA Bench folder (the Hub download or
  ``labkit export … --format lowra``) layer by layer with ``labkit.datasets.lowra``, merges the chosen LoRAs
  (``W'_k = W_P + alpha_k/rank_k · B_k A_k`` in float32), recovers ``W*`` and scores it against ``pre_ft_weight``:
  W-Error = mean over layers of ``log10 MSE`` (§4), the share of layers at ``log10 MSE ≤ −16`` and the Mean-LoRA
  baseline (``W*`` at iteration 0). Defaults per subset follow the paper's runs (``SUBSET_DEFAULTS``); the LoRAs
  are ``random.Random(seed).sample(lora_ids, n)``, which for seed 0 and 15 LoRAs is the official choice
  (n = 5 → ``[13, 6, 12, 14, 0]``).
* ``detune_checkpoints(paths, base=…)`` — the same attack on models you have: safetensors checkpoints with their
  LoRAs merged, or peft adapter folders merged onto ``base`` first. Every 2-D floating weight that differs across
  the checkpoints is recovered; with ``base`` each is also scored against it. (The official repository lists
  custom LoRAs as "coming soon".)

Layers stream through: they are read one at a time, buffered by shape up to ``budget_bytes`` of merged weights
and run as one batched ``spectral_detuning_layers`` call per group (every layer keeps its own rank scheduler).
Batching changes how the randomized SVD draws its random numbers, so traces are not bit-identical to the
official per-layer loop; the W-Error matches it to within run-to-run noise (tests/test_spectral_detuning.py).

Output folder: ``recovered.safetensors`` (one float32 tensor per recovered layer; LoWRA names are
``<layer_model>.<layer_name>``, checkpoint names are the state-dict keys), sharded as
``recovered-0000i-of-0000N.safetensors`` + ``recovered.safetensors.index.json`` above ``shard_bytes``, and
``result.json`` (the summary the command also prints).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.methods.spectral_detuning import final_loss, layer_mse, spectral_detuning_layers
from labkit.replicate import command_device
from labkit.safe_io import CorruptFileError, printable, regular_file, utf8_path, write_json_atomic

__all__ = ["SUBSET_DEFAULTS", "default_lora_ids", "detune_checkpoints", "detune_lowra"]

# paper's main settings per LoWRA subset (README + Slurm scripts): n LoRAs, end rank, iterations
SUBSET_DEFAULTS = {
    "vit": {"n_loras": 5, "end_rank": 16, "n_iters": 300},
    "stable-diffusion-1.5": {"n_loras": 5, "end_rank": 32, "n_iters": 300},
    "mistral-7b-v0.1-sft": {"n_loras": 12, "end_rank": 64, "n_iters": 1000},
    "mistral-7b-v0.1-dpo": {"n_loras": 8, "end_rank": 64, "n_iters": 1000},
}
# any other subset (e.g. an exported mini-jungle zoo): 5 LoRAs, end rank = the largest stored LoRA rank
GENERIC_DEFAULTS = {"n_loras": 5, "end_rank": None, "n_iters": 300}
CHECKPOINT_DEFAULT_RANK = 16  # the official --sched_end_rank default, when no adapter says what rank was used
CONVERGED = -16.0


@dataclass
class _Layer:
    name: str
    merged: torch.Tensor  # [n, d_out, d_in] float32 on the run's device
    W_P: torch.Tensor | None  # [d_out, d_in] or None
    end_rank: int
    index: int


# -------------------------------------------------------------------------------------------- helpers


def default_lora_ids(available: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """The official choice of LoRAs: ``random.sample`` of ``n`` ids after seeding with ``seed``."""
    return random.Random(seed).sample(list(available), n)



def _log10(x: float) -> float | None:
    return math.log10(x) if x > 0 else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _check_layer(name: str, merged: torch.Tensor, end_rank: int) -> None:
    d_out, d_in = merged.shape[-2:]
    if end_rank >= min(d_out, d_in):
        raise ValueError(f"rank {end_rank} is not below min(d_out, d_in) = {min(d_out, d_in)} of layer {name} "
                         f"[{d_out}, {d_in}]; pass a smaller --rank / --end-rank")
    if not torch.isfinite(merged).all():
        raise ValueError(f"layer {name} contains NaN or inf; check the weights")


def _check_reference(name: str, W_P: torch.Tensor | None, source: str) -> None:
    """The pre-fine-tuning weight a layer is scored against must be finite (a NaN would score as "converged")."""
    if W_P is not None and not torch.isfinite(W_P).all():
        raise ValueError(f"the pre-fine-tuning weight {name!r} of {source} contains NaN or inf; W-Error against it "
                         "would be meaningless")


def _batches(layers: Iterable[_Layer], budget_bytes: int) -> Iterator[list[_Layer]]:
    """Group layers of one shape and end rank; emit the largest group whenever the buffer passes the budget."""
    groups: dict[tuple, list[_Layer]] = {}
    sizes: dict[tuple, int] = {}
    total = 0
    for layer in layers:
        key = (tuple(layer.merged.shape), layer.end_rank)
        nbytes = layer.merged.numel() * layer.merged.element_size()
        groups.setdefault(key, []).append(layer)
        sizes[key] = sizes.get(key, 0) + nbytes
        total += nbytes
        while total > budget_bytes and groups:
            big = max(sizes, key=sizes.get)
            total -= sizes.pop(big)
            yield groups.pop(big)
    yield from groups.values()


def _run(layers: Iterable[_Layer], n_iters: int, writer: _ShardWriter, budget_bytes: int) -> tuple[list[dict], float]:
    """Spectral DeTuning on every layer (batched by shape); returns per-layer records and seconds spent on it."""
    records, seconds = [], 0.0
    for batch in _batches(layers, budget_bytes):
        t0 = time.perf_counter()
        merged = torch.stack([layer.merged for layer in batch])  # [B, n, d_out, d_in]
        res = spectral_detuning_layers(merged, batch[0].end_rank, n_iters)
        mean = merged.mean(1)
        seconds += time.perf_counter() - t0
        for i, layer in enumerate(batch):
            rec = {"index": layer.index, "name": layer.name, "shape": list(layer.merged.shape[1:]), "end_rank": layer.end_rank,
                   "final_loss": float(final_loss(res.loss[:, i])), "final_rank": int(res.rank[-1, i])}
            if layer.W_P is not None:
                rec["log10_mse"] = _log10(layer_mse(res.W_star[i], layer.W_P).item())
                rec["mean_lora_log10_mse"] = _log10(layer_mse(mean[i], layer.W_P).item())
            records.append(rec)
            writer.add(layer.name, res.W_star[i])
    return sorted(records, key=lambda r: r["index"]), seconds


def _summary(records: list[dict]) -> dict:
    scored = [r for r in records if "log10_mse" in r]
    if not scored:
        return {}
    sd = [r["log10_mse"] for r in scored]
    ml = [r["mean_lora_log10_mse"] for r in scored]
    return {"w_error": _mean(sd), "mean_lora_w_error": _mean(ml),
            "converged_share": sum(v is None or v <= CONVERGED for v in sd) / len(sd),
            "mean_lora_converged_share": sum(v is None or v <= CONVERGED for v in ml) / len(ml),
            "scored_layers": len(scored)}


class _ShardWriter:
    """Collects recovered tensors on the CPU and writes safetensors shards of at most ``shard_bytes``."""

    def __init__(self, folder: Path, metadata: dict, shard_bytes: int):
        self.folder, self.metadata, self.shard_bytes = Path(folder), metadata, shard_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.pending or any(name in names for _, names in self.shards):
            raise ValueError(f"two recovered layers are both named {name!r}")
        self.pending[name] = tensor.detach().to("cpu", torch.float32)
        self.pending_bytes += tensor.numel() * 4
        if self.pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        from labkit.tensor_files import save_safetensors

        if not self.pending:
            return
        tmp = self.folder / f".recovered-{len(self.shards):05d}-{os.getpid()}.tmp"
        save_safetensors(tmp, self.pending, self.metadata)
        self.shards.append((tmp, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Rename the shards into place (replacing an earlier run's files); return the files written."""
        self._flush()
        for old in self.folder.glob("recovered*.safetensors*"):
            old.unlink()
        n = len(self.shards)
        if n == 1:
            final = self.folder / "recovered.safetensors"
            os.replace(self.shards[0][0], final)
            return [final]
        files, weight_map = [], {}
        for i, (tmp, names) in enumerate(self.shards):
            final = self.folder / f"recovered-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, final)
            files.append(final)
            weight_map.update({name: final.name for name in names})
        index = self.folder / "recovered.safetensors.index.json"
        write_json_atomic(index, {"metadata": self.metadata, "weight_map": weight_map})
        return [*files, index]


def _finish(result: dict, out: Path, writer: _ShardWriter, t_start: float) -> dict:
    result["recovered"] = [str(p) for p in writer.close()]
    result["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    write_json_atomic(out / "result.json", result)
    return result


def _timed(items: Iterable, clock: dict) -> Iterator:
    """Yield from ``items``, adding the time spent producing each item to ``clock["load"]``."""
    it = iter(items)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            clock["load"] += time.perf_counter() - t0
        yield item


# ---------------------------------------------------------------------------------------------- LoWRA


def detune_lowra(
    root: str | Path,
    subset: str,
    out: str | Path,
    *,
    n_loras: int | None = None,
    lora_ids: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    end_rank: int | None = None,
    n_iters: int | None = None,
    device: str | None = None,
    seed: int = 0,
    budget_bytes: int = 1 << 30,
    shard_bytes: int = 2 << 30,
) -> dict:
    """Spectral DeTuning on a LoWRA Bench subset; writes ``out/recovered*.safetensors`` and ``out/result.json``.

    Defaults (n LoRAs, end rank, iterations) from ``SUBSET_DEFAULTS`` (other subsets: 5 LoRAs, the largest
    stored rank, 300 iterations). Returns the result dict: settings, per-layer ``log10_mse`` and
    ``mean_lora_log10_mse``, ``w_error``, ``mean_lora_w_error``, ``converged_share``, seconds.
    """
    from tqdm.auto import tqdm

    from labkit.datasets.lowra import open_lowra
    t_start = time.perf_counter()
    try:
        data = open_lowra(root, subset)
    except FileNotFoundError:
        present = sorted(p.parent.name for p in Path(root).glob("*/*.parquet")) if Path(root).is_dir() else []
        if subset in SUBSET_DEFAULTS or not present:
            raise
        raise ValueError(f"unknown LoWRA subset {subset!r}: {root} holds {sorted(set(present))} (the benchmark's "
                         f"subsets are {', '.join(SUBSET_DEFAULTS)})") from None
    defaults = SUBSET_DEFAULTS.get(subset, GENERIC_DEFAULTS)
    available = list(data.lora_ids)
    if lora_ids is not None and n_loras is not None:
        raise ValueError("give either n_loras or lora_ids, not both")
    if lora_ids is not None:
        lora_ids = [int(i) for i in lora_ids]
        unknown = [i for i in lora_ids if i not in available]
        if unknown:
            raise ValueError(f"LoRA ids {unknown} are not in subset {subset!r} (it has {available})")
        if len(set(lora_ids)) != len(lora_ids):
            raise ValueError(f"LoRA ids repeat: {lora_ids}")
    else:
        n = n_loras if n_loras is not None else min(defaults["n_loras"], len(available))
        if n > len(available):
            raise ValueError(f"asked for {n} LoRAs but subset {subset!r} has {len(available)}")
        lora_ids = default_lora_ids(available, n, seed) if n >= 2 else available[:n]
    if len(lora_ids) < 2:
        raise ValueError(f"Spectral DeTuning needs at least 2 LoRAs, got {len(lora_ids)}")
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < data.n_layers]
        if bad:
            raise ValueError(f"layer indices {bad} are out of range: subset {subset!r} has {data.n_layers} layers")
        layers = list(dict.fromkeys(int(i) for i in layers))
    n_iters = int(n_iters or defaults["n_iters"])
    if n_iters < 1:
        raise ValueError(f"--iters must be positive, got {n_iters}")
    end_rank = end_rank if end_rank is not None else defaults["end_rank"]
    if end_rank is not None and end_rank < 1:
        raise ValueError(f"--end-rank must be positive, got {end_rank}")
    dev = command_device(device)
    torch.manual_seed(seed)
    out = Path(out)
    settings = {"mode": "lowra", "root": str(root), "subset": subset, "lora_ids": lora_ids,
                "n_loras": len(lora_ids), "end_rank": end_rank,
                "n_iters": n_iters, "svd": "torch.svd_lowrank (niter 2)", "seed": seed, "device": str(dev)}
    writer = _ShardWriter(out, {"labkit": "detune", "subset": subset, "lora_ids": json.dumps(lora_ids)}, shard_bytes)
    clock = {"load": 0.0}
    total = len(layers) if layers is not None else data.n_layers

    def stream() -> Iterator[_Layer]:
        # the bar is closed (and its line ended) before any error message reaches stderr
        with tqdm(total=total, desc=f"LoWRA {subset} layers", unit="layer") as bar:
            for layer in _timed(data.iter_layers(lora_ids=lora_ids, layers=layers), clock):
                t0 = time.perf_counter()
                name = f"{layer.layer_model}.{layer.layer_name}"
                merged = layer.merged().to(dev, torch.float32)
                rank = int(end_rank) if end_rank is not None else int(layer.rank.max())
                _check_layer(name, merged, rank)
                _check_reference(name, layer.W_pre, f"LoWRA {subset} under {printable(root)}")
                clock["load"] += time.perf_counter() - t0
                bar.update(1)
                yield _Layer(name, merged, layer.W_pre.to(dev, torch.float32), rank, layer.index)

    records, seconds = _run(stream(), n_iters, writer, budget_bytes)
    if end_rank is None:  # the largest stored LoRA rank of each layer
        settings["end_rank"] = max((r["end_rank"] for r in records), default=None)
    result = {**settings, **_summary(records), "n_layers": len(records),
              "seconds": {"load": round(clock["load"], 3), "detune": round(seconds, 3)}, "layers": records}
    return _finish(result, out, writer, t_start)


# ---------------------------------------------------------------------------------------------- checkpoints


class _Weights:
    """Lazy reader of one safetensors file: ``shapes`` of its 2-D floating tensors, ``get(key)`` as float32."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        name = utf8_path(path)
        try:
            self._file = safe_open(name, framework="pt")
            self.shapes = {}
            for key in self._file.keys():
                sl = self._file.get_slice(key)
                if len(sl.get_shape()) == 2 and sl.get_dtype() in ("F64", "F32", "F16", "BF16"):
                    self.shapes[key] = tuple(sl.get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{printable(path)} is not a readable safetensors file ({printable(e)})") from None
        self.adapted: set[str] | None = None  # a merged checkpoint: any key may differ
        self.rank: int | None = None

    def get(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key).to(torch.float32)


class _MergedAdapter:
    """A peft LoRA adapter folder merged onto a base with peft's rules (``labkit.lora.scaled_factors``):
    ``W = W_base + scaling · B A`` for every adapted layer, computed in float32 when the layer is read."""

    def __init__(self, folder: Path, base: _Weights):
        from labkit.lora import read_adapter, scaled_factors

        config, tensors = read_adapter(folder)
        factors = scaled_factors(config, tensors, printable(folder), base.shapes)
        self.path, self.base, self.shapes = folder, base, base.shapes
        self.delta = {f"{module}.weight": (A.to(torch.float32), B.to(torch.float32), scaling)
                      for module, (A, B, scaling) in factors.items()}
        self.adapted = set(self.delta)
        self.rank = max(A.shape[0] for A, _, _ in self.delta.values())

    def get(self, key: str) -> torch.Tensor:
        from labkit.lora import lora_delta

        W = self.base.get(key)
        if key in self.delta:
            W = W + lora_delta(*self.delta[key])
        return W


def _weights_file(path: Path, what: str) -> Path:
    if path.exists() and not path.is_dir():
        return regular_file(path, f"{what} file")
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if path.is_dir() and (path / "model.safetensors.index.json").is_file():
        raise ValueError(f"{what} {printable(path)} is sharded (model.safetensors.index.json); merge its shards into "
                         "one safetensors file first")
    if not path.exists():
        raise FileNotFoundError(f"{what} {printable(path)} does not exist")
    raise FileNotFoundError(f"{what} {printable(path)} holds no model.safetensors or adapter_config.json")


def _open_checkpoint(path: Path, base: _Weights | None):
    if path.is_dir() and (path / "adapter_config.json").is_file():
        if base is None:
            raise ValueError(f"{printable(path)} is a peft adapter; pass --base (the model it was trained on) to "
                             "merge it")
        return _MergedAdapter(path, base)
    return _Weights(_weights_file(path, "checkpoint"))


def detune_checkpoints(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    base: str | Path | None = None,
    rank: int | None = None,
    n_iters: int = 300,
    device: str | None = None,
    seed: int = 0,
    budget_bytes: int = 1 << 30,
    shard_bytes: int = 2 << 30,
) -> dict:
    """Spectral DeTuning on your own fine-tunes of one base: safetensors files (LoRAs merged) or peft folders.

    Every 2-D floating weight that differs across the checkpoints is recovered with end rank ``rank``
    (default: the largest adapter rank, else 16). With ``base`` (a safetensors file, or a folder holding
    ``model.safetensors``) adapters are merged onto it and each recovered layer is scored against it.
    Returns the result dict (as ``detune_lowra``; ``unchanged`` counts the 2-D weights equal everywhere).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    paths = [Path(p) for p in checkpoints]
    if len(paths) < 2:
        raise ValueError(f"Spectral DeTuning needs at least 2 fine-tuned checkpoints of one base, got {len(paths)}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("the same checkpoint is listed twice")
    base_w = _Weights(_weights_file(Path(base), "base")) if base is not None else None
    sources = [_open_checkpoint(p, base_w) for p in paths]
    first = sources[0]
    for p, s in zip(paths[1:], sources[1:]):
        missing = sorted(set(first.shapes) - set(s.shapes)) or sorted(set(s.shapes) - set(first.shapes))
        if missing:
            raise ValueError(f"{paths[0]} and {p} hold different 2-D weights (e.g. {missing[0]!r}); the checkpoints "
                             "must be fine-tunes of one model")
        shape = next((k for k in first.shapes if s.shapes[k] != first.shapes[k]), None)
        if shape is not None:
            raise ValueError(f"weight {shape!r} has shape {list(first.shapes[shape])} in {paths[0]} but "
                             f"{list(s.shapes[shape])} in {p}")
    ranks = [s.rank for s in sources if s.rank is not None]
    end_rank = int(rank) if rank is not None else (max(ranks) if ranks else CHECKPOINT_DEFAULT_RANK)
    if end_rank < 1:
        raise ValueError(f"--rank must be positive, got {end_rank}")
    if n_iters < 1:
        raise ValueError(f"--iters must be positive, got {n_iters}")
    if all(s.adapted is not None for s in sources):  # adapters only: the other weights are the base's
        keys = [k for k in first.shapes if any(k in s.adapted for s in sources)]
    else:
        keys = list(first.shapes)
    dev = command_device(device)
    torch.manual_seed(seed)
    out = Path(out)
    writer = _ShardWriter(out, {"labkit": "detune", "checkpoints": json.dumps([str(p) for p in paths])}, shard_bytes)
    clock = {"load": 0.0}
    unchanged: list[str] = []

    def stream() -> Iterator[_Layer]:
        with tqdm(keys, desc="checkpoint weights", unit="weight") as bar:
            for index, key in enumerate(bar):
                t0 = time.perf_counter()
                mats = [s.get(key) for s in sources]
                if all(torch.equal(m, mats[0]) for m in mats[1:]):
                    unchanged.append(key)
                    clock["load"] += time.perf_counter() - t0
                    continue
                for p, m in zip(paths, mats):
                    if not torch.isfinite(m).all():
                        raise ValueError(f"weight {key!r} of {printable(p)} contains NaN or inf; that checkpoint is "
                                         "broken (a diverged fine-tune?) and cannot be used")
                merged = torch.stack(mats).to(dev)
                _check_layer(key, merged, end_rank)
                W_P = base_w.get(key).to(dev) if base_w is not None and key in base_w.shapes else None
                _check_reference(key, W_P, printable(base))
                clock["load"] += time.perf_counter() - t0
                yield _Layer(key, merged, W_P, end_rank, index)

    records, seconds = _run(stream(), n_iters, writer, budget_bytes)
    if not records:
        raise ValueError("the checkpoints are equal in every 2-D weight; there is nothing to recover")
    result = {"mode": "checkpoints", "checkpoints": [str(p) for p in paths], "base": str(base) if base else None,
              "n_loras": len(paths), "end_rank": end_rank, "n_iters": n_iters, "svd": "torch.svd_lowrank (niter 2)",
              "seed": seed, "device": str(dev), **_summary(records), "n_layers": len(records),
              "unchanged": len(unchanged), "seconds": {"load": round(clock["load"], 3), "detune": round(seconds, 3)},
              "layers": records}
    return _finish(result, out, writer, t_start)
