"""LoRA-WiSE loader on the fixture (dsire.md §4): flat and list-of-rows cells, keys from columns, clear errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from labkit.benchmarks import BenchmarkFormatError, BenchmarkMissingError
from labkit.benchmarks.lora_wise import open_lora_wise

FIX = Path(__file__).parent / "fixtures" / "lora_wise"
LOW = FIX / "low" / "8" / "train-00000-of-00001.parquet"
Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def test_flat_cells_reshape_row_major():
    cfg = open_lora_wise(FIX, "low_8")
    assert cfg.rank == 8 and cfg.keys == [Q, K] and len(cfg) == 6
    assert cfg.sizes.tolist() == [1, 5, 10, 1, 5, 10]
    assert cfg.names == ["backpack"] * 3 + ["wooden_pot"] * 3
    A, B = cfg.layer(K)
    assert A.shape == (6, 8, 16) and B.shape == (6, 24, 8) and A.dtype == torch.float64
    raw = pq.read_table(LOW, columns=[K + ".lora.down.weight"]).column(0)[4].as_py()
    assert torch.equal(A[4], torch.tensor(raw, dtype=torch.float64).reshape(8, 16))
    # the fixture's signal: ‖B A‖_F shrinks with the dataset size
    norms = torch.linalg.matrix_norm(B @ A)
    assert norms[0] > norms[1] > norms[2]


def test_list_of_rows_cells_and_int_names():
    cfg = open_lora_wise(FIX, "medium_8")
    assert cfg.names == [3] * 3 + [17] * 3
    A, B = cfg.layer(Q)
    assert A.shape == (6, 8, 24) and B.shape == (6, 24, 8)


def test_wrong_rank_is_a_clear_error():
    cfg = open_lora_wise(FIX, "low_8", rank=7)
    with pytest.raises(BenchmarkFormatError, match="not divisible by rank 7"):
        cfg.layer(Q)
    cfg = open_lora_wise(FIX, "medium_8", rank=4)
    with pytest.raises(BenchmarkFormatError, match="do not fit rank 4"):
        cfg.layer(Q)
    with pytest.raises(KeyError, match="no LoRA layer"):
        cfg.layer("unet.nope")


def test_missing_and_truncated(tmp_path):
    with pytest.raises(BenchmarkMissingError, match="download.py lora-wise --subset high_32"):
        open_lora_wise(FIX, "high_32")
    (tmp_path / "low_8").mkdir()
    data = LOW.read_bytes()
    (tmp_path / "low_8" / "train-00000-of-00001.parquet").write_bytes(data[:-100])
    with pytest.raises(BenchmarkFormatError, match="truncated or corrupt"):
        open_lora_wise(tmp_path, "low_8")


def test_wrong_schema(tmp_path):
    (tmp_path / "low_8").mkdir()
    t = pq.read_table(LOW)
    pq.write_table(t.drop_columns([Q + ".lora.up.weight"]), tmp_path / "low_8" / "train-0.parquet")
    with pytest.raises(BenchmarkFormatError, match="without their pair"):
        open_lora_wise(tmp_path, "low_8")
    pq.write_table(t.set_column(0, "label", pa.array(["x"] * 6)), tmp_path / "low_8" / "train-0.parquet")
    with pytest.raises(BenchmarkFormatError, match="wrong column types"):
        open_lora_wise(tmp_path, "low_8")
