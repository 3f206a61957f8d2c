"""The model zoos of ProbeGen (Kahana et al. 2025; spec ``probegen.md`` §4).

* **INR zoos** (MNIST / FMNIST SIRENs, DWSNets data, Neural-Graphs splits): one ``torch.save``d state dict per
  image with keys ``seq.{0,1,2}.{weight,bias}`` (``[32,2] [32] [32,32] [32] [1,32] [1]``), FMNIST files also an
  int ``label`` (popped). Read with ``torch.load(weights_only=True)``. The split JSON
  ``{"train"|"val"|"test": {"path": [...], "label": [...]}}`` holds paths relative to the dataset folder and labels
  as ints or digit strings (cast with ``int``).
* **CIFAR10-GS** (Small CNN Zoo, Unterthiner et al. 2020): ``weights.npy`` ``[N_ckpt, 4970]`` flattened TF-style,
  ``metrics.csv.gz`` (``step``, ``test_accuracy``, ``train_accuracy``, ``config.activation``), ``layout.csv``
  (``varname``, ``start_idx``, ``end_idx``, ``shape`` as a tuple string, parsed without ``eval``). Conv kernels HWIO → OIHW, the dense kernel
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
    labkit.training.stack_states(wp.states)                          # {key: [N, ...]} if shapes agree
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labkit.datasets import BenchmarkFormatError, require
from labkit.datasets.safe_pickle import NUMPY, OMEGACONF, restricted_load, to_plain
from labkit.safe_io import inside, printable, read_bytes, read_json, regular_file
from labkit.training import stack_states

__all__ = ["INR_SHAPES", "WildPark", "cifar10_gs_metrics", "cifar10_gs_splits", "load_cifar10_gs", "load_inr_zoo", "load_wild_park"]

INR_SHAPES = {"seq.0.weight": (32, 2), "seq.0.bias": (32,), "seq.1.weight": (32, 32), "seq.1.bias": (32,),
              "seq.2.weight": (1, 32), "seq.2.bias": (1,)}
_SPLITS = ("train", "val", "test")
FINAL_STEP = 86


MAX_JSON_BYTES = 256 << 20  # split JSONs (the real MNIST one is about 5 MB)
MAX_CSV_BYTES = 512 << 20  # a CSV after decompression (CIFAR10-GS metrics: tens of MB)
MAX_INR_BYTES = 64 << 20  # one SIREN state dict (about 5 kB)
_SHAPE = re.compile(r"^[(\[]\s*(\d+\s*(,\s*\d+\s*)*,?\s*)?[)\]]$")


def _split_json(path: Path, split: str, fields: tuple[str, ...]) -> dict[str, list]:
    """The ``fields`` lists of ``split`` in a split JSON (read with a size bound; errors name the file)."""
    path = require(path, "split file", None)
    where = printable(path)
    data = read_json(path, MAX_JSON_BYTES, "split file", BenchmarkFormatError)
    try:
        entry = data[split]
        out = {f: entry[f] for f in fields}
    except (KeyError, TypeError, IndexError):
        raise BenchmarkFormatError(f"{where}: no {split!r} entry with fields {list(fields)}; expected "
                                   f'{{"{split}": {{{", ".join(repr(f) for f in fields)}: [...]}}}}') from None
    if not all(isinstance(v, list) for v in out.values()):
        raise BenchmarkFormatError(f"{where}: the {split} fields {list(fields)} must be lists")
    if len({len(v) for v in out.values()}) != 1:
        raise BenchmarkFormatError(f"{where}: the {split} lists {list(fields)} have different lengths")
    return out


def _member_path(root: Path, rel: object, split_file: Path, what: str) -> Path:
    """``root / rel`` for a path a split file names: a string that stays inside ``root`` and exists."""
    if not isinstance(rel, str) or not rel:
        raise BenchmarkFormatError(f"{printable(split_file)}: path entry {printable(rel)[:80]!r} is not a file name")
    return require(inside(root, rel, f"{printable(split_file)}: path"), what, None)


def _numbers(values: list, kind: type, path: Path, field: str) -> torch.Tensor:
    """``values`` cast with ``kind`` (labels may be digit strings) as a tensor; errors name the split file."""
    out = []
    for x in values:
        try:
            out.append(kind(x))
        except (TypeError, ValueError, OverflowError):
            raise BenchmarkFormatError(f"{printable(path)}: {field} value {printable(x)[:40]!r} is not "
                                       f"{'an integer' if kind is int else 'a number'}") from None
    try:
        return torch.tensor(out, dtype=torch.int64 if kind is int else torch.float32)
    except (RuntimeError, OverflowError):
        raise BenchmarkFormatError(f"{printable(path)}: {field} values out of range") from None


def _inr_state(p: Path) -> dict[str, torch.Tensor]:
    """One SIREN state dict (``torch.load(weights_only=True)`` of at most ``MAX_INR_BYTES``), shapes checked."""
    data = read_bytes(p, MAX_INR_BYTES, "INR file")
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / non-torch files
        raise BenchmarkFormatError(f"{printable(p)}: not a readable torch state dict ({type(e).__name__}); the file "
                                   "is truncated or not in the INR format — download it again") from None
    if not isinstance(sd, dict):
        raise BenchmarkFormatError(f"{printable(p)}: holds a {type(sd).__name__}, expected a state dict")
    sd.pop("label", None)
    wrong = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()
             if k not in INR_SHAPES or not isinstance(v, torch.Tensor) or tuple(v.shape) != INR_SHAPES[k]}
    if wrong or len(sd) != len(INR_SHAPES):
        raise BenchmarkFormatError(f"{printable(p)}: not a DWSNets SIREN (unexpected {printable(wrong or 'missing keys')[:200]}); "
                                   f"expected {INR_SHAPES}")
    return {k: sd[k].float() for k in INR_SHAPES}


def load_inr_zoo(root: str | Path, split_json: str | Path, split: str = "train"
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """SIREN state dicts of ``split`` stacked as ``{key: [N, ...]}`` with int64 labels ``[N]``. Every path the
    split JSON names must stay inside ``root``."""
    root = require(root, "INR zoo folder", None)
    split_json = Path(split_json)
    rows = _split_json(split_json, split, ("path", "label"))
    labels = _numbers(rows["label"], int, split_json, "label")
    states = [_inr_state(_member_path(root, rel, split_json, "INR file")) for rel in rows["path"]]
    return stack_states(states), labels


def _csv_text(path: Path) -> str:
    """The text of a CSV (gunzipped for ``.gz``), at most ``MAX_CSV_BYTES`` after decompression; errors name
    the file."""
    raw = read_bytes(path, MAX_CSV_BYTES, "CSV file")
    try:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read(MAX_CSV_BYTES + 1)  # bounded: a gzip bomb stops here
        text = raw.decode() if len(raw) <= MAX_CSV_BYTES else None
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise BenchmarkFormatError(f"{printable(path)}: cannot read it ({printable(e)[:80]}); the file is truncated "
                                   "— download it again") from None
    if text is None:
        raise BenchmarkFormatError(f"{printable(path)}: decompresses to more than {MAX_CSV_BYTES:,} bytes; it is not "
                                   "the file labkit expects")
    return text


def _csv_rows(path: Path) -> list[dict[str, str]]:
    path = require(path, "CIFAR10-GS file", "README.md")
    try:
        return list(csv.DictReader(io.StringIO(_csv_text(path))))
    except csv.Error as e:
        raise BenchmarkFormatError(f"{printable(path)}: not a readable CSV ({printable(e)[:80]}); the file is "
                                   "truncated — download it again") from None


def _cell(row: dict, name: str, kind: type, path: Path, line: int) -> int | float:
    """Cell ``name`` of one CSV row cast with ``kind``; a bad cell is an error naming the file and line."""
    try:
        return kind(float(row[name])) if kind is int else kind(row[name])
    except (TypeError, ValueError, OverflowError, KeyError):
        raise BenchmarkFormatError(f"{printable(path)}: line {line}, column {name}: "
                                   f"{printable(row.get(name))[:40]!r} is not a number") from None


def _column(rows: list[dict], name: str, kind: type, path: Path) -> list:
    """Column ``name`` of CSV ``rows`` (line 1 is the header) cast with ``kind``."""
    return [_cell(r, name, kind, path, i + 2) for i, r in enumerate(rows)]


def cifar10_gs_splits(steps: np.ndarray, order: np.ndarray | None) -> dict[str, np.ndarray]:
    """NFN's split of CIFAR10-GS row indices: permute by ``order`` (the split file, quirk kept), keep the final
    checkpoints, test = second half, the first half shuffled with ``random.Random(0)`` → 80 % train / 20 % val."""
    idx = np.arange(len(steps)) if order is None else order
    bad = [int(i) for i in idx if not 0 <= i < len(steps)]
    if bad:
        raise BenchmarkFormatError(f"split row index {bad[0]} is outside 0..{len(steps) - 1}")
    idx = [int(i) for i in idx if steps[i] == FINAL_STEP]
    half = len(idx) // 2
    first, test = idx[:half], idx[half:]
    random.Random(0).shuffle(first)
    cut = int(0.8 * len(first))
    return {"train": np.array(first[:cut], dtype=np.int64), "val": np.array(first[cut:], dtype=np.int64),
            "test": np.array(test, dtype=np.int64)}


def _split_order(split_file: str | Path, n_rows: int) -> np.ndarray:
    """The row permutation of a CIFAR10-GS split file (one index per line, pandas' ``0`` header read as a row);
    an index that is not a number or outside ``0..n_rows-1`` is an error naming the file and the index."""
    path = require(split_file, "CIFAR10-GS split file", None)
    tokens = _csv_text(Path(path)).split()
    order = []
    for line, t in enumerate(tokens, 1):
        try:
            i = int(float(t))
        except (ValueError, OverflowError):
            raise BenchmarkFormatError(f"{printable(path)}: entry {line} ({printable(t)[:40]!r}) is not a row "
                                       "index") from None
        if not 0 <= i < n_rows:
            raise BenchmarkFormatError(f"{printable(path)}: entry {line} is row index {i}, outside "
                                       f"0..{n_rows - 1} (metrics.csv.gz has {n_rows} rows); wrong split file")
        order.append(i)
    return np.array(order, dtype=np.int64)


def _layout(rows: list[dict[str, str]], path: Path, width: int) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(varname, start, end, shape) per layout row; shapes parsed as tuples of ints (never ``eval``)."""
    out = []
    for i, r in enumerate(rows):
        text = (r.get("shape") or "").strip()
        m = _SHAPE.match(text) if len(text) < 200 else None
        start, end = _cell(r, "start_idx", int, path, i + 2), _cell(r, "end_idx", int, path, i + 2)
        shape = tuple(int(d) for d in re.findall(r"\d+", text)) if m else None
        if shape is None or not 0 <= start <= end <= width or math.prod(shape) != end - start:
            raise BenchmarkFormatError(f"{printable(path)}: line {i + 2} ({printable(r.get('varname'))[:60]}) spans "
                                       f"{start}..{end} of {width} with shape {printable(text)[:40]!r}; the layout "
                                       "does not fit weights.npy")
        out.append((r.get("varname") or f"var{i}", start, end, shape))
    return out


def _weights(wfile: Path) -> np.ndarray:
    """``weights.npy`` memory-mapped (a regular file of numbers, no pickles)."""
    regular_file(wfile, "weights.npy")
    try:
        w = np.load(wfile, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BenchmarkFormatError(f"{printable(wfile)}: not a readable .npy array ({printable(e)[:80]}); the file is "
                                   "truncated") from None
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.number):
        raise BenchmarkFormatError(f"{printable(wfile)}: a {w.dtype} array of shape {w.shape}, expected numbers "
                                   "[N_ckpt, 4970]")
    return w


def cifar10_gs_metrics(root: str | Path, split_file: str | Path | None = None
                       ) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
    """The rows of ``metrics.csv.gz`` (one per checkpoint, as strings) and NFN's split of their indices
    (``{"train", "val", "test"}``, in the order ``load_cifar10_gs`` returns them); errors name the file."""
    root = require(root, "CIFAR10-GS folder", None)
    mfile = root / "metrics.csv.gz"
    metrics = _csv_rows(mfile)
    need = {"step", "test_accuracy"}
    if not metrics or not need <= set(metrics[0]):
        raise BenchmarkFormatError(f"{printable(mfile)}: missing columns {sorted(need)}")
    steps = np.array(_column(metrics, "step", int, mfile))
    order = None if split_file is None else _split_order(split_file, len(steps))
    return metrics, cifar10_gs_splits(steps, order)


def load_cifar10_gs(root: str | Path, split_file: str | Path | None = None, split: str | None = "test"
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """CIFAR10-GS networks of ``split`` (``None``: every row, in file order) as ``{varname: [N, ...]}`` in PyTorch
    layout (conv OIHW, dense ``[out, in]``) and their test accuracies ``[N]``. Weights are memory-mapped."""
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS} or None, got {split!r}")
    root = require(root, "CIFAR10-GS folder", None)
    wfile = require(root / "weights.npy", "CIFAR10-GS weights.npy", None)
    weights = _weights(wfile)
    mfile, lfile = root / "metrics.csv.gz", root / "layout.csv"
    metrics, splits = cifar10_gs_metrics(root, split_file)
    layout = _csv_rows(lfile)
    if not layout or not {"varname", "start_idx", "end_idx", "shape"} <= set(layout[0]):
        raise BenchmarkFormatError(f"{printable(lfile)}: needs columns varname, start_idx, end_idx, shape")
    if len(weights) != len(metrics):
        raise BenchmarkFormatError(f"{printable(wfile)}: shape {weights.shape} does not match {len(metrics)} metric "
                                   f"rows in {printable(mfile)}")
    accuracy = _column(metrics, "test_accuracy", float, mfile)
    rows = np.arange(len(metrics)) if split is None else splits[split]
    flat = np.asarray(weights[np.sort(rows)], dtype=np.float32)[np.argsort(np.argsort(rows))]
    if not np.isfinite(flat).all():
        raise BenchmarkFormatError(f"{printable(wfile)}: non-finite weights in the selected rows")
    params = {}
    for name, start, end, shape in _layout(layout, lfile, flat.shape[1]):
        t = torch.from_numpy(flat[:, start:end].reshape(len(flat), *shape))
        if len(shape) == 4:
            t = t.permute(0, 4, 3, 1, 2)  # TF HWIO → PyTorch OIHW
        elif len(shape) == 2:
            t = t.permute(0, 2, 1)  # dense [in, out] → [out, in]
        params[name] = t.contiguous()
    return params, torch.tensor([accuracy[i] for i in rows], dtype=torch.float32)


@dataclass
class WildPark:
    """CNN Wild Park checkpoints of one split: state dicts, configs (plain dicts), test accuracy, step."""

    states: list[dict[str, torch.Tensor]]
    configs: list[dict]
    scores: torch.Tensor
    steps: torch.Tensor


def _wild_checkpoint(p: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, plain config) of one Wild Park checkpoint, read through ``restricted_load``."""
    ckpt = restricted_load(p, {**OMEGACONF, **NUMPY})
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or "config" not in ckpt:
        raise BenchmarkFormatError(f"{printable(p)}: not a Wild Park checkpoint (expected a dict with 'model' and "
                                   "'config')")
    bad = [k for k, v in model.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BenchmarkFormatError(f"{printable(p)}: model entry {printable(bad[0])[:60]!r} is not a tensor; not a "
                                   "Wild Park checkpoint")
    config = to_plain(ckpt["config"], str(p))
    return {k: v.float() for k, v in model.items()}, config


def load_wild_park(root: str | Path, split_json: str | Path, split: str = "test") -> WildPark:
    """Read the checkpoints of ``split`` safely (``restricted_load``; only tensors and OmegaConf stubs). Every
    path the split JSON names must stay inside ``root``."""
    root = require(root, "CNN Wild Park folder (cnn_wild)", None)
    split_json = Path(split_json)
    rows = _split_json(split_json, split, ("path", "score", "step"))
    scores, steps = _numbers(rows["score"], float, split_json, "score"), _numbers(rows["step"], int, split_json, "step")
    loaded = [_wild_checkpoint(_member_path(root, rel, split_json, "Wild Park checkpoint")) for rel in rows["path"]]
    return WildPark([s for s, _ in loaded], [c for _, c in loaded], scores, steps)
