"""LoRA-WiSE (DSiRe, Salama et al. 2025; spec ``dsire.md`` §4).

Hub dataset ``MoSalama98/LoRA-WiSE``; configs ``low_8``, ``low_16``, ``low_32``, ``medium_16``, ``medium_32``,
``medium_32_2`` (SD 2) and ``high_32``, in folders such as ``low/16/train-0000{0..7}-of-00008.parquet`` (the
dataset card's YAML maps each config to its files). One row = one LoRA fine-tune: ``label`` (int64, the
dataset size = the class), ``name`` (the personalisation set; int for medium/high, Concept101 folder names —
strings — for low) and one column per LoRA matrix named by its diffusers key, ``<module>.lora.down.weight``
(A, ``[r, in]``) and ``<module>.lora.up.weight`` (B, ``[out, r]``).

Cells are flat ``list<float64>`` (what the card declares) or lists of rows (``list<list<float64>>``); flat cells
are reshaped row-major by the rank, ``down → (r, len/r)``, ``up → (len/r, r)``, and lists of rows are stacked.
The rank comes from the config name (``low_16`` → 16) unless given.

Public API::

    cfg = open_lora_wise(root, "low_16")           # rank=None → from the config name
    cfg.rank, cfg.keys                             # 16, ["unet.down_blocks.0.attentions.0…attn1.to_k", …]
    cfg.sizes                                      # [N] int64 labels (dataset sizes)
    cfg.names                                      # list of N ints or strs
    A, B = cfg.layer(cfg.keys[0])                  # [N, r, in], [N, out, r], float64 — reads only 2 columns

The layer keys are enumerated from the columns (never a hard-coded count). A wrong rank (a flat length not
divisible by it, or list-of-rows cells whose shape does not match it) raises ``BenchmarkFormatError``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import torch

from labkit.datasets import BenchmarkFormatError
from labkit.datasets._parquet import (
    is_float_list,
    list_depth,
    matrix_cells,
    open_parquet,
    shard_files,
    vector_cells,
)
from labkit.safe_io import printable

__all__ = ["CONFIGS", "DOWN", "UP", "LoraWiseConfig", "open_lora_wise"]

CONFIGS = ("low_8", "low_16", "low_32", "medium_16", "medium_32", "medium_32_2", "high_32")
DOWN, UP = ".lora.down.weight", ".lora.up.weight"


class LoraWiseConfig:
    """One LoRA-WiSE config on disk (see the module docstring); open it with ``open_lora_wise``."""

    def __init__(self, files: list[Path], config: str, rank: int):
        if rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.config, self.files, self.rank = config, files, int(rank)
        self._pf = [open_parquet(f) for f in files]
        schema = self._pf[0].schema_arrow
        missing = [c for c in ("label", "name") if c not in schema.names]
        downs = [c[: -len(DOWN)] for c in schema.names if c.endswith(DOWN)]
        ups = {c[: -len(UP)] for c in schema.names if c.endswith(UP)}
        if missing or not downs:
            raise BenchmarkFormatError(f"{printable(files[0])}: not a LoRA-WiSE shard (missing {missing or ['*' + DOWN]}); "
                                       "expected label, name and <module>.lora.down/up.weight columns")
        unpaired = sorted(set(downs) ^ ups)
        if unpaired:
            raise BenchmarkFormatError(f"{printable(files[0])}: LoRA matrices without their pair: {unpaired[:3]}; every "
                                       f"<module>{DOWN} needs a <module>{UP} column")
        bad = [c for c in schema.names if c.endswith((DOWN, UP))
               and not (is_float_list(schema.field(c).type, 1) or is_float_list(schema.field(c).type, 2))]
        if bad or not pa.types.is_integer(schema.field("label").type):
            raise BenchmarkFormatError(f"{printable(files[0])}: wrong column types ({bad[:2] or 'label'}); matrices must be "
                                       "list<float64> (flat) or list<list<float64>>, label an integer")
        for f, pf in zip(files[1:], self._pf[1:]):
            if pf.schema_arrow.names != schema.names:
                raise BenchmarkFormatError(f"{printable(f)}: its columns differ from {files[0].name}'s; re-download the config")
        self.keys: list[str] = downs
        self._schema = schema
        table = self._read(["label", "name"])
        if not table.num_rows:
            raise BenchmarkFormatError(f"{printable(files[0])}: LoRA-WiSE config {config!r} holds no rows (0 rows in "
                                       f"{len(files)} shard(s)); the download is incomplete — run it again")
        self.sizes = torch.tensor(table.column("label").to_pylist(), dtype=torch.int64)
        self.names: list = table.column("name").to_pylist()

    def __len__(self) -> int:
        return len(self.sizes)

    def __repr__(self) -> str:
        return f"LoraWiseConfig({self.config!r}, rank {self.rank}, {len(self)} models, {len(self.keys)} layers)"

    def _read(self, columns: list[str]) -> pa.Table:
        """``columns`` of every shard, concatenated; a null cell is an error naming its shard and column."""
        tables = []
        for f, pf in zip(self.files, self._pf):
            try:
                t = pf.read(columns=columns)
            except (pa.ArrowInvalid, OSError) as e:
                raise BenchmarkFormatError(f"{printable(f)}: cannot read columns {columns} "
                                           f"({str(e).splitlines()[0]}); the shard is truncated or corrupt — "
                                           "download it again") from None
            nulls = [c for c in columns if t.column(c).null_count]
            if nulls:
                raise BenchmarkFormatError(f"{printable(f)}: column {nulls[0]!r} has empty (null) cells; the shard "
                                           "is incomplete — download it again")
            tables.append(t)
        return pa.concat_tables(tables)

    def _matrix(self, column: pa.ChunkedArray, name: str, down: bool) -> torch.Tensor:
        r = self.rank
        if list_depth(self._schema.field(name).type) == 2:
            m = matrix_cells(column, name, torch.float64)
            if (m.shape[1] if down else m.shape[2]) != r:
                raise BenchmarkFormatError(f"{name}: cells are {tuple(m.shape[1:])} matrices, which do not fit rank "
                                           f"{r} (expected {'[r, in]' if down else '[out, r]'}); pass the right rank=")
            return m
        v = vector_cells(column, name, torch.float64)
        if v.shape[1] % r:
            raise BenchmarkFormatError(f"{name}: flat cells of length {v.shape[1]} are not divisible by rank {r}; "
                                       "the rank is wrong — pass the right rank= (the config suffix, e.g. low_16 → 16)")
        return v.reshape(len(v), r, -1) if down else v.reshape(len(v), -1, r)

    def layer(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [N, r, in], B [N, out, r])`` (float64) of layer ``key`` for every model; reads only its 2 columns."""
        if key not in self.keys:
            raise KeyError(f"no LoRA layer {key!r} in {self.config}; see .keys ({len(self.keys)} layers)")
        t = self._read([key + DOWN, key + UP])
        return self._matrix(t.column(0), key + DOWN, True), self._matrix(t.column(1), key + UP, False)


def _rank_of(config: str) -> int:
    m = re.match(r"^[a-z]+_(\d+)", config)
    if not m:
        raise ValueError(f"cannot read the rank from config name {config!r}; pass rank= explicitly")
    return int(m.group(1))


def open_lora_wise(root: str | Path, config: str, rank: int | None = None) -> LoraWiseConfig:
    """Open LoRA-WiSE config ``config`` under ``root`` (the hub snapshot: README YAML + ``low/16/train-*``)."""
    parts = config.split("_")
    fallbacks = [f"{config}/train-*", f"{'/'.join(parts)}/train-*", f"{parts[0]}/{parts[1]}/train-*"
                 if len(parts) > 1 else f"{config}/*.parquet"]
    files = shard_files(root, config, fallbacks, "LoRA-WiSE", f"download.py lora-wise --subset {config} --dest {root}")
    return LoraWiseConfig(files, config, _rank_of(config) if rank is None else int(rank))
