"""The model zoos of ProbeGen (Kahana et al. 2025; spec ``probegen.md`` §4).

* **INR zoos** (MNIST / FMNIST SIRENs, DWSNets data, Neural-Graphs splits): one ``torch.save``d state dict per
  image with keys ``seq.{0,1,2}.{weight,bias}`` (``[32,2] [32] [32,32] [32] [1,32] [1]``), FMNIST files also an
  int ``label`` (popped). Read with ``torch.load(weights_only=True)``. The split JSON
  ``{"train"|"val"|"test": {"path": [...], "label": [...]}}`` holds paths relative to the dataset folder and labels
  as ints or digit strings (cast with ``int``).
* **CIFAR10-GS** (Small CNN Zoo, Unterthiner et al. 2020): ``weights.npy`` ``[N_ckpt, 4970]`` flattened TF-style,
  ``metrics.csv.gz`` (``step``, ``test_accuracy``, ``train_accuracy``, ``config.activation``), ``layout.csv``
  (``varname``, ``start_idx``, ``end_idx``, ``shape`` as a tuple string). Conv kernels HWIO → OIHW, the dense kernel
  ``[in, out]`` → ``[out, in]``. Splits follow NFN: rows permuted by ``nfn_cifar10_split.csv`` (one column of row
  indices whose first line is pandas' ``0`` header, read as a row — index 0 appears twice; reproduced), final
  checkpoints only (``step == 86``), test = second half, the first half shuffled with ``random.Random(0)`` and cut
  80 % train / 20 % val. Label: ``test_accuracy``.
* **CNN Wild Park** (Kofinas et al. 2024): ``checkpoint.pt`` pickles with ``model`` (state dict ``layers.{i}.*``,
  ``fc.*``), ``optimizer`` and ``config`` (an OmegaConf DictConfig or a dict), read through ``restricted_load``
  (OmegaConf classes as stubs, omegaconf not needed; numpy numbers allowed). Split JSON ``{split: {"path", "score", "step"}}``, paths
  relative to the ``cnn_wild`` folder. Architectures differ, so models come back as a list.

Public API::

    params, labels = load_inr_zoo(root, split_json, "train")         # {key: [N, ...]}, [N] int64
    params, labels = load_cifar10_gs(root, split_file, "test")       # {varname: [N, ...]} (PyTorch layout), [N]
    wp = load_wild_park(root, split_json, "test")                    # WildPark(states, configs, scores, steps)
    stack_params(wp.states)                                          # {key: [N, ...]} if shapes agree
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labkit.benchmarks import BenchmarkFormatError, require
from labkit.benchmarks.safe_pickle import NUMPY, OMEGACONF, restricted_load, to_plain

__all__ = ["INR_SHAPES", "WildPark", "cifar10_gs_splits", "load_cifar10_gs", "load_inr_zoo", "load_wild_park",
           "stack_params"]

INR_SHAPES = {"seq.0.weight": (32, 2), "seq.0.bias": (32,), "seq.1.weight": (32, 32), "seq.1.bias": (32,),
              "seq.2.weight": (1, 32), "seq.2.bias": (1,)}
_SPLITS = ("train", "val", "test")
FINAL_STEP = 86


def stack_params(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{key: [N, ...]}`` from N state dicts with the same keys and shapes (else ``BenchmarkFormatError``)."""
    if not states:
        raise ValueError("no models to stack")
    keys = list(states[0])
    for i, s in enumerate(states):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise BenchmarkFormatError(f"model {i} has other parameter names or shapes than model 0; these models "
                                       "have different architectures and cannot be stacked")
    return {k: torch.stack([s[k] for s in states]) for k in keys}


def _split_json(path: Path, split: str, fields: tuple[str, ...]) -> dict[str, list]:
    path = require(path, "split file", None)
    try:
        data = json.loads(path.read_text())
        entry = data[split]
        out = {f: list(entry[f]) for f in fields}
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not valid JSON ({e}); the file is truncated") from None
    except (KeyError, TypeError):
        raise BenchmarkFormatError(f"{path}: no {split!r} entry with fields {list(fields)}; expected "
                                   f'{{"{split}": {{{", ".join(repr(f) for f in fields)}: [...]}}}}') from None
    if len({len(v) for v in out.values()}) != 1:
        raise BenchmarkFormatError(f"{path}: the {split} lists {list(fields)} have different lengths")
    return out


def load_inr_zoo(root: str | Path, split_json: str | Path, split: str = "train"
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """SIREN state dicts of ``split`` stacked as ``{key: [N, ...]}`` with int64 labels ``[N]``."""
    root = require(root, "INR zoo folder", None)
    rows = _split_json(Path(split_json), split, ("path", "label"))
    states = []
    for rel in rows["path"]:
        p = require(root / rel, "INR file", None)
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated / non-torch files
            raise BenchmarkFormatError(f"{p}: not a readable torch state dict ({type(e).__name__}); the file is "
                                       "truncated or not in the INR format — download it again") from None
        if not isinstance(sd, dict):
            raise BenchmarkFormatError(f"{p}: holds a {type(sd).__name__}, expected a state dict")
        sd.pop("label", None)
        wrong = {k: tuple(v.shape) for k, v in sd.items() if k not in INR_SHAPES or tuple(v.shape) != INR_SHAPES[k]}
        if wrong or len(sd) != len(INR_SHAPES):
            raise BenchmarkFormatError(f"{p}: not a DWSNets SIREN (unexpected {wrong or 'missing keys'}); expected "
                                       f"{INR_SHAPES}")
        states.append({k: sd[k].float() for k in INR_SHAPES})
    return stack_params(states), torch.tensor([int(x) for x in rows["label"]], dtype=torch.int64)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    path = require(path, "CIFAR10-GS file", "README.md")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return list(csv.DictReader(io.StringIO(raw.decode())))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BenchmarkFormatError(f"{path}: cannot read it ({e}); the file is truncated — download it again") \
            from None


def cifar10_gs_splits(steps: np.ndarray, order: np.ndarray | None) -> dict[str, np.ndarray]:
    """NFN's split of CIFAR10-GS row indices: permute by ``order`` (the split file, quirk kept), keep the final
    checkpoints, test = second half, the first half shuffled with ``random.Random(0)`` → 80 % train / 20 % val."""
    idx = np.arange(len(steps)) if order is None else order
    idx = [int(i) for i in idx if steps[i] == FINAL_STEP]
    half = len(idx) // 2
    first, test = idx[:half], idx[half:]
    random.Random(0).shuffle(first)
    cut = int(0.8 * len(first))
    return {"train": np.array(first[:cut], dtype=np.int64), "val": np.array(first[cut:], dtype=np.int64),
            "test": np.array(test, dtype=np.int64)}


def load_cifar10_gs(root: str | Path, split_file: str | Path | None = None, split: str | None = "test"
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """CIFAR10-GS networks of ``split`` (``None``: every row, in file order) as ``{varname: [N, ...]}`` in PyTorch
    layout (conv OIHW, dense ``[out, in]``) and their test accuracies ``[N]``. Weights are memory-mapped."""
    root = require(root, "CIFAR10-GS folder", None)
    wfile = require(root / "weights.npy", "CIFAR10-GS weights.npy", None)
    try:
        weights = np.load(wfile, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BenchmarkFormatError(f"{wfile}: not a readable .npy array ({e}); the file is truncated") from None
    metrics = _csv_rows(root / "metrics.csv.gz")
    layout = _csv_rows(root / "layout.csv")
    need = {"step", "test_accuracy"}
    if not metrics or not need <= set(metrics[0]):
        raise BenchmarkFormatError(f"{root / 'metrics.csv.gz'}: missing columns {sorted(need)}")
    if not layout or not {"varname", "start_idx", "end_idx", "shape"} <= set(layout[0]):
        raise BenchmarkFormatError(f"{root / 'layout.csv'}: needs columns varname, start_idx, end_idx, shape")
    if weights.ndim != 2 or len(weights) != len(metrics):
        raise BenchmarkFormatError(f"{wfile}: shape {weights.shape} does not match {len(metrics)} metric rows")
    steps = np.array([int(float(r["step"])) for r in metrics])
    if split is None:
        rows = np.arange(len(steps))
    else:
        order = None
        if split_file is not None:
            text = require(split_file, "CIFAR10-GS split file", None).read_text().split()
            order = np.array([int(float(t)) for t in text], dtype=np.int64)  # header=None: the "0" header is a row
            if order.size and (order.min() < 0 or order.max() >= len(steps)):
                raise BenchmarkFormatError(f"{split_file}: row indices outside 0..{len(steps) - 1}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS} or None, got {split!r}")
        rows = cifar10_gs_splits(steps, order)[split]
    flat = np.asarray(weights[np.sort(rows)], dtype=np.float32)[np.argsort(np.argsort(rows))]
    if not np.isfinite(flat).all():
        raise BenchmarkFormatError(f"{wfile}: non-finite weights in the selected rows")
    params = {}
    for r in layout:
        start, end = int(r["start_idx"]), int(r["end_idx"])
        shape = tuple(ast.literal_eval(r["shape"]))
        if int(np.prod(shape)) != end - start or end > flat.shape[1]:
            raise BenchmarkFormatError(f"layout.csv: {r['varname']} spans {start}..{end} but has shape {shape}")
        t = torch.from_numpy(flat[:, start:end].reshape(len(flat), *shape))
        if len(shape) == 4:
            t = t.permute(0, 4, 3, 1, 2)  # TF HWIO → PyTorch OIHW
        elif len(shape) == 2:
            t = t.permute(0, 2, 1)  # dense [in, out] → [out, in]
        params[r["varname"]] = t.contiguous()
    labels = torch.tensor([float(metrics[i]["test_accuracy"]) for i in rows], dtype=torch.float32)
    return params, labels


@dataclass
class WildPark:
    """CNN Wild Park checkpoints of one split: state dicts, configs (plain dicts), test accuracy, step."""

    states: list[dict[str, torch.Tensor]]
    configs: list[dict]
    scores: torch.Tensor
    steps: torch.Tensor


def load_wild_park(root: str | Path, split_json: str | Path, split: str = "test") -> WildPark:
    """Read the checkpoints of ``split`` safely (``restricted_load``; only tensors and OmegaConf stubs)."""
    root = require(root, "CNN Wild Park folder (cnn_wild)", None)
    rows = _split_json(Path(split_json), split, ("path", "score", "step"))
    states, configs = [], []
    for rel in rows["path"]:
        p = require(root / rel, "Wild Park checkpoint", None)
        ckpt = restricted_load(p, {**OMEGACONF, **NUMPY})
        if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
            raise BenchmarkFormatError(f"{p}: not a Wild Park checkpoint (expected a dict with 'model' and 'config')")
        states.append({k: v.float() for k, v in ckpt["model"].items()})
        configs.append(to_plain(ckpt["config"]))
    return WildPark(states, configs, torch.tensor(rows["score"], dtype=torch.float32),
                    torch.tensor(rows["step"], dtype=torch.int64))
