"""Shared parquet helpers for the hub dataset layouts (LoWRA Bench, LoRA-WiSE): find a config's shards from the
dataset card's YAML (``configs: - config_name: X, data_files: [{split: train, path: X/train-*}]``) or from the
folder layout, open them with pyarrow, and turn list cells into tensors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from labkit.benchmarks import BenchmarkFormatError, BenchmarkMissingError

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def card_patterns(root: Path, config: str) -> list[str] | None:
    """The ``train`` data-file globs the README's YAML gives for ``config`` (None: no card or no such entry)."""
    card = root / "README.md"
    if not card.is_file():
        return None
    m = _FRONT.match(card.read_text(encoding="utf-8", errors="replace"))
    if not m:
        return None
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise BenchmarkFormatError(f"{card}: the YAML header does not parse ({e}); fix or delete the README") \
            from None
    for entry in meta.get("configs") or []:
        if isinstance(entry, dict) and entry.get("config_name") == config:
            files = entry.get("data_files")
            if isinstance(files, str):
                return [files]
            out = []
            for f in files or []:
                if isinstance(f, dict) and f.get("split", "train") == "train":
                    out.extend([f["path"]] if isinstance(f.get("path"), str) else f.get("path") or [])
                elif isinstance(f, str):
                    out.append(f)
            return out
    return None


def shard_files(root: str | Path, config: str, fallbacks: list[str], what: str, download: str) -> list[Path]:
    """Sorted parquet shards of ``config`` under ``root``: the card's globs first, then ``fallbacks``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchmarkMissingError(f"{what} folder {root} not found; fetch it with `python data_scripts/{download}`")
    patterns = card_patterns(root, config) or fallbacks
    for pattern in patterns:
        files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix in ("", ".parquet"))
        if files:
            return files
    raise BenchmarkMissingError(f"no parquet shards for {what} config {config!r} under {root} (looked for "
                                f"{', '.join(patterns)}); fetch it with `python data_scripts/{download}`")


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile`` with a clear error for a truncated or non-parquet file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BenchmarkFormatError(f"{path} is not a readable parquet file ({str(e).splitlines()[0]}); it is "
                                   "truncated or corrupt: delete it and download it again") from None


def is_float_list(t: pa.DataType, depth: int) -> bool:
    """Whether ``t`` is a (large) list nested ``depth`` times around a floating-point type."""
    for _ in range(depth):
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            return False
        t = t.value_type
    return pa.types.is_floating(t)


def list_depth(t: pa.DataType) -> int:
    d = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t, d = t.value_type, d + 1
    return d


def _owned(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A writable tensor of ``dtype`` from arrow's (read-only) buffer, in one copy."""
    return torch.from_numpy(np.array(values, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def matrix_cells(arr: pa.Array, column: str, dtype: torch.dtype) -> torch.Tensor:
    """A column of ``list<list<float>>`` cells (lists of rows) as one tensor ``[n_cells, rows, cols]``.

    Every cell must hold the same number of rows of the same length; otherwise ``BenchmarkFormatError``.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if arr.null_count:
        raise BenchmarkFormatError(f"column {column!r} has empty (null) cells; the file is incomplete")
    rows = arr.flatten()
    n_rows = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    n_cols = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    if n == 0 or len(set(n_rows.tolist())) > 1 or len(set(n_cols.tolist())) > 1:
        raise BenchmarkFormatError(f"column {column!r}: cells are not matrices of one shape (rows per cell "
                                   f"{sorted(set(n_rows.tolist()))[:4]}, row lengths {sorted(set(n_cols.tolist()))[:4]})")
    values = _owned(rows.flatten().to_numpy(zero_copy_only=False), dtype)
    return values.reshape(n, int(n_rows[0]), int(n_cols[0]))


def vector_cells(arr: pa.Array, column: str, dtype: torch.dtype) -> torch.Tensor:
    """A column of flat ``list<float>`` cells of one length as ``[n_cells, length]``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise BenchmarkFormatError(f"column {column!r} has empty (null) cells; the file is incomplete")
    lengths = set(pc.list_value_length(arr).to_numpy(zero_copy_only=False).tolist())
    if len(arr) == 0 or len(lengths) > 1:
        raise BenchmarkFormatError(f"column {column!r}: cells have different lengths {sorted(lengths)[:4]}")
    return _owned(arr.flatten().to_numpy(zero_copy_only=False), dtype).reshape(len(arr), lengths.pop())
