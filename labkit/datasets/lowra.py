"""LoWRA Bench (Spectral DeTuning, Horwitz et al. ICML 2024; spec ``spectral_detuning.md`` §3).

Hub dataset ``Eliahu/LoWRA-Bench``; subsets ``vit``, ``stable-diffusion-1.5``, ``mistral-7b-v0.1-sft``,
``mistral-7b-v0.1-dpo``. One parquet row = one layer of the source model (the row index is the layer index);
80 columns: ``task_name``, ``layer_model``, ``layer_name``, ``pre_ft_name``, ``pre_ft_weight``
(``list<list<float32>>``, W_P ``[m, n]``) and for each LoRA ``k = 0..14``: ``lora_{k}_name``,
``lora_{k}_A_weight`` (``[r, n]``), ``lora_{k}_B_weight`` (``[m, r]``), ``lora_{k}_rank``, ``lora_{k}_alpha``.
Merge rule: ``W'_k = W_P + (alpha_k / rank_k) · B_k @ A_k`` in float32.

Public API::

    sub = open_lowra(root, "vit")          # root holds vit/train-*.parquet (and optionally the README YAML)
    sub.n_layers, sub.lora_ids             # 24, [0, 1, …, 14]
    for layer in sub.iter_layers(lora_ids=[0, 1, 2], layers=range(4)):
        layer.W_pre [m, n], layer.A [L, r, n], layer.B [L, m, r], layer.alpha [L], layer.rank [L],
        layer.layer_name, layer.lora_names
        layer.merged()                     # [L, m, n] = W_pre + alpha/rank · B @ A

The reader uses pyarrow directly (not ``datasets``): it opens only the columns of the chosen LoRAs and streams
row by row (``iter_batches(batch_size=1)`` over the row groups that hold the requested layers), so memory holds
one layer at a time, never all 15 LoRAs of every layer (row groups of the real files reach 2.5 GiB). LoRAs of one
layer with different ranks are zero-padded to the largest rank in ``A``/``B`` (``B @ A`` is unchanged);
``rank`` keeps each LoRA's true rank for the ``alpha / rank`` scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from labkit.datasets import BenchmarkFormatError
from labkit.datasets._parquet import is_float_list, matrix_cells, open_parquet, shard_files
from labkit.safe_io import printable

__all__ = ["SUBSETS", "LowraLayer", "LowraSubset", "open_lowra"]

SUBSETS = ("vit", "stable-diffusion-1.5", "mistral-7b-v0.1-sft", "mistral-7b-v0.1-dpo")
_BASE = ("task_name", "layer_model", "layer_name", "pre_ft_name", "pre_ft_weight")
_PER_LORA = ("name", "A_weight", "B_weight", "rank", "alpha")
_LORA_COL = re.compile(r"^lora_(\d+)_A_weight$")


@dataclass
class LowraLayer:
    """One layer: W_P and the chosen LoRAs. ``A [L, r, n]``, ``B [L, m, r]``, ``alpha``/``rank`` ``[L]``."""

    index: int
    layer_model: str
    layer_name: str
    W_pre: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    alpha: torch.Tensor
    rank: torch.Tensor
    lora_names: list[str]

    def merged(self) -> torch.Tensor:
        """The fine-tuned weights ``[L, m, n] = W_pre + (alpha / rank) · B @ A`` (float32)."""
        scale = (self.alpha.float() / self.rank.float()).view(-1, 1, 1)
        return self.W_pre.unsqueeze(0) + scale * torch.bmm(self.B, self.A)


class LowraSubset:
    """One LoWRA Bench subset on disk (see the module docstring); open it with ``open_lowra``."""

    def __init__(self, files: list[Path], subset: str):
        self.subset = subset
        self.files = files
        self._pf = [open_parquet(f) for f in files]
        schema = self._pf[0].schema_arrow
        self.lora_ids = sorted(int(m.group(1)) for c in schema.names if (m := _LORA_COL.match(c)))
        self._check_schema(schema, files[0])
        for f, pf in zip(files[1:], self._pf[1:]):
            if pf.schema_arrow.names != schema.names:
                raise BenchmarkFormatError(f"{printable(f)}: its columns differ from {printable(files[0].name)}'s; the shards are from "
                                           "different versions — download the subset again")
        # global row index → (file, row group, row within the group)
        self._groups = []
        start = 0
        for fi, pf in enumerate(self._pf):
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                self._groups.append((start, start + n, fi, g))
                start += n
        self.n_layers = start
        if not start:
            raise BenchmarkFormatError(f"{printable(files[0])}: LoWRA Bench subset {subset!r} holds no layers (0 rows "
                                       f"in {len(files)} shard(s)); the download is incomplete — run it again")

    def _check_schema(self, schema: pa.Schema, path: Path) -> None:
        missing = [c for c in _BASE if c not in schema.names]
        if not self.lora_ids:
            missing.append("lora_{k}_A_weight")
        missing += [f"lora_{k}_{p}" for k in self.lora_ids for p in _PER_LORA if f"lora_{k}_{p}" not in schema.names]
        if missing:
            raise BenchmarkFormatError(f"{printable(path)}: not a LoWRA Bench shard, missing columns {missing[:5]}; expected "
                                       "the 80-column layout (spectral_detuning.md §3)")
        weights = ["pre_ft_weight"] + [f"lora_{k}_{w}_weight" for k in self.lora_ids for w in "AB"]
        bad = [c for c in weights if not is_float_list(schema.field(c).type, 2)]
        bad += [c for k in self.lora_ids for c in (f"lora_{k}_rank", f"lora_{k}_alpha")
                if not pa.types.is_integer(schema.field(c).type) and not pa.types.is_floating(schema.field(c).type)]
        if bad:
            raise BenchmarkFormatError(f"{printable(path)}: wrong column types {[(c, str(schema.field(c).type)) for c in bad[:3]]}; "
                                       "weights must be list<list<float32>> (list of rows), rank/alpha integers")

    def __repr__(self) -> str:
        return f"LowraSubset({self.subset!r}, {self.n_layers} layers, {len(self.lora_ids)} LoRAs, {len(self.files)} shards)"

    def _lora_ids(self, lora_ids: Iterable[int] | None) -> list[int]:
        ids = self.lora_ids if lora_ids is None else [int(k) for k in lora_ids]
        unknown = sorted(set(ids) - set(self.lora_ids))
        if unknown or not ids:
            raise ValueError(f"LoRA ids {unknown or ids} not in this subset (it has {self.lora_ids})")
        return ids

    def _rows(self, layers: Iterable[int] | None, columns: list[str]) -> Iterator[tuple[int, dict, Path]]:
        """(layer index, {column: pyarrow array of length 1}, its shard) for the requested layers, in file order."""
        wanted = range(self.n_layers) if layers is None else sorted({int(i) for i in layers})
        bad = [i for i in wanted if not 0 <= i < self.n_layers]
        if bad:
            raise IndexError(f"layer {bad[0]} out of range: {self.subset} has {self.n_layers} layers (0..{self.n_layers - 1})")
        want = set(wanted)
        for start, stop, fi, g in self._groups:
            if not any(start <= i < stop for i in want):
                continue
            i = start
            try:
                for batch in self._pf[fi].iter_batches(batch_size=1, row_groups=[g], columns=columns):
                    if i in want:
                        yield i, {c: batch.column(c) for c in columns}, self.files[fi]
                    i += 1
            except (pa.ArrowInvalid, OSError) as e:
                raise BenchmarkFormatError(f"{printable(self.files[fi])}: cannot read row group {g} ({str(e).splitlines()[0]}); "
                                           "the shard is truncated or corrupt — download it again") from None

    def iter_layers(self, lora_ids: Iterable[int] | None = None,
                    layers: Iterable[int] | None = None) -> Iterator[LowraLayer]:
        """Yield ``LowraLayer`` for ``layers`` (default all, in order) with the LoRAs ``lora_ids`` (default all)."""
        ids = self._lora_ids(lora_ids)
        cols = ["layer_model", "layer_name", "pre_ft_weight"]
        cols += [f"lora_{k}_{p}" for k in ids for p in _PER_LORA]
        for i, row, path in self._rows(layers, cols):
            W = _matrix(row, "pre_ft_weight", path, i)
            m, n = W.shape
            ranks = [_rank(row, f"lora_{k}_rank", path, i) for k in ids]
            r_max = max(ranks)
            A = torch.zeros(len(ids), r_max, n)
            B = torch.zeros(len(ids), m, r_max)
            for j, (k, r) in enumerate(zip(ids, ranks)):
                a = _matrix(row, f"lora_{k}_A_weight", path, i)
                b = _matrix(row, f"lora_{k}_B_weight", path, i)
                if a.shape != (r, n) or b.shape != (m, r):
                    raise BenchmarkFormatError(
                        f"{printable(path)}: {self.subset} layer {i}, LoRA {k}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit "
                        f"rank {r} and W_pre {m}×{n} (expected A [{r}, {n}], B [{m}, {r}]); the rank column or "
                        "the weights are wrong — re-download the shard")
                A[j, :r], B[j, :, :r] = a, b
            yield LowraLayer(
                index=i, layer_model=row["layer_model"][0].as_py(), layer_name=row["layer_name"][0].as_py(),
                W_pre=W, A=A, B=B,
                alpha=torch.tensor([_number(row, f"lora_{k}_alpha", path, i) for k in ids]),
                rank=torch.tensor(ranks, dtype=torch.int64),
                lora_names=[row[f"lora_{k}_name"][0].as_py() for k in ids])


def _number(row: dict, column: str, path: Path, layer: int) -> float:
    """The finite number in ``column`` of one layer's row; one-line ``BenchmarkFormatError`` if null or not."""
    value = row[column][0].as_py()
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BenchmarkFormatError(f"{printable(path)}: layer {layer}, column {column} is {value!r}, not a number; "
                                   "the shard is incomplete or corrupt — download it again")
    return float(value)


def _rank(row: dict, column: str, path: Path, layer: int) -> int:
    """The positive integer rank in ``column`` of one layer's row."""
    value = _number(row, column, path, layer)
    if value < 1 or not value.is_integer():
        raise BenchmarkFormatError(f"{printable(path)}: layer {layer}, column {column} is {value:g}, not a positive "
                                   "integer rank; the shard is corrupt — download it again")
    return int(value)


def _matrix(row: dict, column: str, path: Path, layer: int) -> torch.Tensor:
    """The ``list<list<float>>`` cell in ``column`` of one layer's row as a float32 matrix."""
    try:
        return matrix_cells(row[column], column, torch.float32)[0]
    except BenchmarkFormatError as e:
        raise BenchmarkFormatError(f"{printable(path)}: layer {layer}: {e}") from None


def open_lowra(root: str | Path, subset: str) -> LowraSubset:
    """Open LoWRA Bench subset ``subset`` under ``root`` (a folder with ``<subset>/train-*.parquet``, optionally
    a README whose YAML ``configs:`` maps the subset to its data files — the hub snapshot layout)."""
    files = shard_files(root, subset, [f"{subset}/train-*.parquet", f"{subset}/*.parquet"], "LoWRA Bench",
                        f"download.py lowra --subset {subset} --dest {root}")
    return LowraSubset(files, subset)
