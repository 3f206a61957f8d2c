"""LoRA-WiSE loader on the fixture (dsire.md §4): flat and list-of-rows cells, keys from columns, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.datasets.lora_wise import open_lora_wise
from labkit.safe_io import UnsafeInputError

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


# ------------------------------------------------------------------ crafted datasets (issue 13, item 6b)


def test_card_pattern_outside_the_dataset_is_refused(tmp_path):
    shutil.copytree(FIX / "low", tmp_path / "outside" / "low")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "README.md").write_text("---\nconfigs:\n- config_name: low_8\n  data_files:\n"
                                               "  - split: train\n    path: ../outside/low/8/*.parquet\n---\n")
    with pytest.raises(UnsafeInputError, match=r"README.md: data_files pattern '../outside/low/8/\*.parquet' leaves"):
        open_lora_wise(tmp_path / "ds", "low_8")
    (tmp_path / "ds" / "README.md").write_text("---\nconfigs:\n- config_name: low_8\n  data_files: "
                                               f"{tmp_path}/outside/low/8/*.parquet\n---\n")
    with pytest.raises(UnsafeInputError, match="leaves the dataset folder"):
        open_lora_wise(tmp_path / "ds", "low_8")


def test_card_that_is_not_a_mapping(tmp_path):
    (tmp_path / "README.md").write_text("---\n- just\n- a list\n---\n")
    with pytest.raises(BenchmarkFormatError, match="README.md: the YAML header is a list, not a mapping"):
        open_lora_wise(tmp_path, "low_8")


@pytest.mark.parametrize("header, says", [
    ("configs: [unclosed\n", "the YAML header does not parse"),
    ("[" * 50_000 + "]" * 50_000 + "\n", "the YAML header does not parse"),  # nesting past the recursion limit
    ("1: one\nconfigs: []\n", "the YAML header does not parse (keywords must be strings)"),
    ("just text\n", "the YAML header is a str, not a mapping"),
])
def test_bad_card_headers_are_one_line_naming_the_card(tmp_path, header, says):
    (tmp_path / "README.md").write_text(f"---\n{header}---\nbody\n")
    with pytest.raises(BenchmarkFormatError, match=r"README.md: ") as err:
        open_lora_wise(tmp_path, "low_8")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_card_size_is_checked_before_parsing_and_a_card_without_header_is_ignored(tmp_path, monkeypatch):
    from labkit.datasets import _parquet

    shutil.copytree(FIX / "low", tmp_path / "low")
    (tmp_path / "README.md").write_text("# LoRA-WiSE\n\nno YAML header here\n")
    assert len(open_lora_wise(tmp_path, "low_8")) == 6  # the folder layout
    monkeypatch.setattr(_parquet, "MAX_CARD_BYTES", 10)
    with pytest.raises(UnsafeInputError, match="README.md"):
        open_lora_wise(tmp_path, "low_8")


def test_empty_config_is_an_error(tmp_path):
    (tmp_path / "low_8").mkdir()
    pq.write_table(pq.read_table(LOW).slice(0, 0), tmp_path / "low_8" / "train-0.parquet")
    with pytest.raises(BenchmarkFormatError, match=r"train-0.parquet: LoRA-WiSE config 'low_8' holds no rows"):
        open_lora_wise(tmp_path, "low_8")


def test_null_cells_name_the_shard_and_column(tmp_path):
    (tmp_path / "low_8").mkdir()
    t = pq.read_table(LOW)
    t = t.set_column(0, "label", pa.array([1, None, 10, 1, 5, 10], pa.int64()))
    pq.write_table(t, tmp_path / "low_8" / "train-0.parquet")
    with pytest.raises(BenchmarkFormatError, match=r"train-0.parquet: column 'label' has empty \(null\) cells"):
        open_lora_wise(tmp_path, "low_8")
