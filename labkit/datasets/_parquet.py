"""Shared parquet helpers for the hub dataset layouts (LoWRA Bench, LoRA-WiSE): find a config's shards from the
dataset card's YAML (``configs: - config_name: X, data_files: [{split: train, path: X/train-*}]``, read with
``huggingface_hub.DatasetCard``) or from the folder layout, open them with pyarrow, and turn list cells into
tensors."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.safe_io import UnsafeInputError, inside, printable, read_bytes, regular_file

MAX_CARD_BYTES = 10_000_000  # a dataset card (the real ones are a few kB)
MAX_PATTERNS = 10_000


def read_card(card: Path):
    """The dataset card ``card`` (a README.md, at most ``MAX_CARD_BYTES``) as a ``huggingface_hub.DatasetCard``;
    a card without a YAML header gets an empty one. A header that does not parse or is not a mapping is one
    ``BenchmarkFormatError`` line naming the card."""
    import yaml
    from huggingface_hub import DatasetCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    text = read_bytes(card, MAX_CARD_BYTES, "dataset card").decode("utf-8-sig", errors="replace")
    block = REGEX_YAML_BLOCK.search(text)
    if not block:  # (DatasetCard would log a warning and parse the same)
        text = "---\n{}\n---\n" + text
    try:
        return DatasetCard(text)
    except (yaml.YAMLError, RecursionError, TypeError) as e:  # TypeError: a key that is not text
        why = printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BenchmarkFormatError(f"{printable(card)}: the YAML header does not parse ({why}); fix or delete the "
                                   "README") from None
    except ValueError:  # "repo card metadata block should be a dict"
        kind = type(yaml.safe_load(block.group(2))).__name__ if block else "?"
        raise BenchmarkFormatError(f"{printable(card)}: the YAML header is a {kind}, not a mapping; fix or delete "
                                   "the README") from None


def _train_patterns(files: object) -> list:
    """The ``train`` globs of one config's ``data_files`` (a string, a list of strings or of split entries)."""
    if isinstance(files, str):
        return [files]
    out: list = []
    for f in files if isinstance(files, list) else []:
        if isinstance(f, dict) and f.get("split", "train") == "train":
            path = f.get("path")
            out.extend([path] if isinstance(path, str) else path if isinstance(path, list) else [])
        elif isinstance(f, str):
            out.append(f)
    return out


def _check_pattern(card: Path, pattern: object) -> str:
    """``pattern`` if it is a relative glob that stays inside the dataset folder (no ``..``, not absolute)."""
    parts = PurePosixPath(pattern).parts if isinstance(pattern, str) and pattern else None
    if parts is None or PurePosixPath(pattern).is_absolute() or ".." in parts or "\\" in pattern:
        raise UnsafeInputError(f"{printable(card)}: data_files pattern {printable(pattern)[:120]!r} leaves the "
                               "dataset folder (absolute or with '..'); labkit reads only files inside it — fix or "
                               "delete the README")
    return pattern


def card_patterns(root: Path, config: str) -> list[str] | None:
    """The ``train`` data-file globs the README's YAML gives for ``config`` (None: no card or no such entry);
    every glob must be relative and free of ``..`` (else ``UnsafeInputError``)."""
    card = root / "README.md"
    if not card.exists():
        return None
    configs = getattr(read_card(card).data, "configs", None)
    for entry in configs if isinstance(configs, list) else []:
        if isinstance(entry, dict) and entry.get("config_name") == config:
            patterns = _train_patterns(entry.get("data_files"))
            if len(patterns) > MAX_PATTERNS:
                raise BenchmarkFormatError(f"{printable(card)}: {len(patterns):,} data_files patterns for {config!r}; "
                                           "fix or delete the README")
            return [_check_pattern(card, p) for p in patterns]
    return None


def _boundary(root: Path) -> Path:
    """The folder shards must stay inside: ``root``, or for a hub-cache snapshot (``…/snapshots/<hash>``,
    whose files link to ``../../blobs``) the repo folder above it."""
    root = root.resolve()
    return root.parents[1] if root.parent.name == "snapshots" and len(root.parents) > 1 else root


def _globbed(root: Path, pattern: str) -> list[Path]:
    """Sorted parquet files matching ``pattern`` under ``root``, each checked to resolve inside the dataset."""
    boundary = _boundary(root)
    files = sorted(p for p in root.glob(pattern) if p.suffix in ("", ".parquet") and not p.is_dir())
    for p in files:
        regular_file(p, "parquet file")  # a FIFO, device or symlink loop among the shards is refused, not skipped
        inside(boundary, p.resolve(), f"parquet shard {printable(p)}")
    return files


def shard_files(root: str | Path, config: str, fallbacks: list[str], what: str, download: str) -> list[Path]:
    """Sorted parquet shards of ``config`` under ``root``: the card's globs first, then ``fallbacks``. Every
    shard must resolve inside the dataset folder (``UnsafeInputError`` otherwise)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchmarkMissingError(f"{what} folder {printable(root)} not found; fetch it with "
                                    f"`python data_scripts/{download}`")
    patterns = card_patterns(root, config) or fallbacks
    for pattern in patterns:
        files = _globbed(root, pattern)
        if files:
            return files
    raise BenchmarkMissingError(f"no parquet shards for {what} config {config!r} under {printable(root)} (looked "
                                f"for {', '.join(patterns)}); fetch it with `python data_scripts/{download}`")


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile`` of a regular file (FIFOs, devices refused) with a clear error for a truncated or
    non-parquet file."""
    path = regular_file(path, "parquet file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BenchmarkFormatError(f"{printable(path)} is not a readable parquet file ({str(e).splitlines()[0]}); it is "
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
