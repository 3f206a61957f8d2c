"""LoWRA Bench loader on the fixture (spectral_detuning.md §3): exact W_P, merge rule, streaming, clear errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.datasets.lowra import open_lowra
from labkit.safe_io import UnsafeInputError

FIX = Path(__file__).parent / "fixtures" / "lowra"
SHARD = FIX / "vit" / "train-00000-of-00001.parquet"


def test_layout_and_exact_weights():
    sub = open_lowra(FIX, "vit")
    assert sub.n_layers == 2 and sub.lora_ids == list(range(15))
    assert len(pq.read_schema(SHARD).names) == 80
    expected = load_file(str(FIX / "expected.safetensors"))
    layers = list(sub.iter_layers())
    assert layers[1].layer_name.endswith("attention.value") and layers[1].rank.tolist() == [16] * 15
    assert [lay.index for lay in layers] == [0, 1]
    for lay in layers:
        assert torch.equal(lay.W_pre, expected[f"layer_{lay.index}"])
        assert lay.A.shape == (15, 16, 32) and lay.B.shape == (15, 40, 16)
        merged = lay.merged()
        assert merged.shape == (15, 40, 32) and merged.dtype == torch.float32
        k = 7
        torch.testing.assert_close(merged[k], lay.W_pre + (16 / 16) * lay.B[k] @ lay.A[k])
        assert not torch.equal(merged[k], lay.W_pre)  # non-zero B, as the official code asserts


def test_subset_of_loras_and_layers_reads_only_those():
    sub = open_lowra(FIX, "vit")
    (lay,) = sub.iter_layers(lora_ids=[3, 0], layers=[1])
    full = next(iter(sub.iter_layers(layers=[1])))
    assert lay.index == 1 and lay.lora_names == ["vit_lora_3", "vit_lora_0"]
    assert torch.equal(lay.A, full.A[[3, 0]]) and torch.equal(lay.B, full.B[[3, 0]])
    with pytest.raises(ValueError, match="not in this subset"):
        next(sub.iter_layers(lora_ids=[15]))
    with pytest.raises(IndexError, match="out of range"):
        next(sub.iter_layers(layers=[2]))


def test_folder_layout_without_card(tmp_path):
    shutil.copytree(FIX / "vit", tmp_path / "vit")
    assert open_lowra(tmp_path, "vit").n_layers == 2


def test_missing_subset_names_the_download_command(tmp_path):
    with pytest.raises(BenchmarkMissingError, match=r"data_scripts/download.py lowra --subset mistral"):
        open_lowra(FIX, "mistral-7b-v0.1-sft")


def test_truncated_shard(tmp_path):
    (tmp_path / "vit").mkdir()
    data = SHARD.read_bytes()
    (tmp_path / "vit" / SHARD.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchmarkFormatError, match="truncated or corrupt"):
        open_lowra(tmp_path, "vit")


def test_wrong_schema(tmp_path):
    (tmp_path / "vit").mkdir()
    t = pq.read_table(SHARD).drop_columns(["pre_ft_weight"])
    pq.write_table(t, tmp_path / "vit" / SHARD.name)
    with pytest.raises(BenchmarkFormatError, match=r"missing columns \['pre_ft_weight'\]"):
        open_lowra(tmp_path, "vit")
    t = pq.read_table(SHARD)
    t = t.set_column(t.schema.get_field_index("lora_0_A_weight"), "lora_0_A_weight",
                     pa.array([[1.0]] * 2, pa.list_(pa.float64())))
    pq.write_table(t, tmp_path / "vit" / SHARD.name)
    with pytest.raises(BenchmarkFormatError, match="wrong column types"):
        open_lowra(tmp_path, "vit")


def test_wrong_rank(tmp_path):
    (tmp_path / "vit").mkdir()
    t = pq.read_table(SHARD)
    t = t.set_column(t.schema.get_field_index("lora_2_rank"), "lora_2_rank", pa.array([8, 8], pa.int64()))
    pq.write_table(t, tmp_path / "vit" / SHARD.name)
    sub = open_lowra(tmp_path, "vit")
    with pytest.raises(BenchmarkFormatError, match="do not fit rank 8"):
        next(sub.iter_layers(lora_ids=[2]))


def test_streams_only_the_chosen_columns_and_row_groups():
    sub = open_lowra(FIX, "vit")
    calls = []
    pf = sub._pf[0]
    real = pf.iter_batches

    def spy(**kw):
        calls.append(kw)
        return real(**kw)

    pf.iter_batches = spy
    (lay,) = sub.iter_layers(lora_ids=[4], layers=[1])
    assert lay.A.shape == (1, 16, 32)
    assert len(calls) == 1 and calls[0]["row_groups"] == [1] and calls[0]["batch_size"] == 1
    assert not any(c.startswith(("lora_0_", "lora_5_")) for c in calls[0]["columns"])
    assert {c for c in calls[0]["columns"] if c.startswith("lora_")} == {f"lora_4_{p}" for p in
                                                                         ("name", "A_weight", "B_weight", "rank", "alpha")}


def test_card_yaml_maps_the_subset_to_its_files(tmp_path):
    shutil.copytree(FIX / "vit", tmp_path / "elsewhere")
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: custom\n  data_files:\n  - split: train\n"
                                        "    path: elsewhere/train-*\n---\n")
    assert open_lowra(tmp_path, "custom").n_layers == 2


# ------------------------------------------------------------------ crafted datasets (issue 13, item 6b)


@pytest.mark.parametrize("pattern", ["../outside/*.parquet", "/tmp/*.parquet", "vit/../../outside/*.parquet"])
def test_card_patterns_cannot_leave_the_dataset(tmp_path, pattern):
    shutil.copytree(FIX / "vit", tmp_path / "outside")  # real shards next to the dataset, not in it
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "README.md").write_text("---\nconfigs:\n- config_name: vit\n  data_files:\n  - split: train\n"
                                               f"    path: {pattern}\n---\n")
    with pytest.raises(UnsafeInputError, match=r"README.md: data_files pattern .* leaves the dataset folder"):
        open_lowra(tmp_path / "ds", "vit")


def test_symlinked_shard_outside_the_dataset_is_refused(tmp_path):
    shutil.copytree(FIX / "vit", tmp_path / "outside")
    (tmp_path / "ds" / "vit").mkdir(parents=True)
    (tmp_path / "ds" / "vit" / SHARD.name).symlink_to(tmp_path / "outside" / SHARD.name)
    with pytest.raises(UnsafeInputError, match="points outside"):
        open_lowra(tmp_path / "ds", "vit")


def test_hub_snapshot_links_to_blobs_are_fine(tmp_path):
    snap = tmp_path / "datasets--Eliahu--LoWRA-Bench" / "snapshots" / "abc"
    (snap / "vit").mkdir(parents=True)
    (tmp_path / "datasets--Eliahu--LoWRA-Bench" / "blobs").mkdir()
    blob = tmp_path / "datasets--Eliahu--LoWRA-Bench" / "blobs" / "f00"
    shutil.copyfile(SHARD, blob)
    (snap / "vit" / SHARD.name).symlink_to(Path("../../../blobs/f00"))
    assert open_lowra(snap, "vit").n_layers == 2


@pytest.mark.parametrize("column", ["lora_3_rank", "lora_3_alpha"])
def test_null_rank_or_alpha_names_file_layer_and_column(tmp_path, column):
    (tmp_path / "vit").mkdir()
    t = pq.read_table(SHARD)
    t = t.set_column(t.schema.get_field_index(column), column, pa.array([16, None], pa.int64()))
    pq.write_table(t, tmp_path / "vit" / SHARD.name, row_group_size=1)
    sub = open_lowra(tmp_path, "vit")
    match = rf"{SHARD.name}: layer 1, column {column} is None, not a number"
    with pytest.raises(BenchmarkFormatError, match=match):
        list(sub.iter_layers(lora_ids=[3]))
    assert next(iter(sub.iter_layers(lora_ids=[3]))).index == 0  # layer 0 is intact


def test_zero_rank_is_refused(tmp_path):
    (tmp_path / "vit").mkdir()
    t = pq.read_table(SHARD)
    t = t.set_column(t.schema.get_field_index("lora_0_rank"), "lora_0_rank", pa.array([0, 16], pa.int64()))
    pq.write_table(t, tmp_path / "vit" / SHARD.name)
    with pytest.raises(BenchmarkFormatError, match="layer 0, column lora_0_rank is 0, not a positive integer"):
        next(open_lowra(tmp_path, "vit").iter_layers())


def test_empty_subset_is_an_error(tmp_path):
    (tmp_path / "vit").mkdir()
    pq.write_table(pq.read_table(SHARD).slice(0, 0), tmp_path / "vit" / SHARD.name)
    with pytest.raises(BenchmarkFormatError, match="holds no layers .*the download is incomplete"):
        open_lowra(tmp_path, "vit")


@pytest.mark.timeout(60)
def test_fifo_shard_is_refused(tmp_path):
    (tmp_path / "vit").mkdir()
    os.mkfifo(tmp_path / "vit" / "train-00000-of-00001.parquet")
    shutil.copyfile(SHARD, tmp_path / "vit" / "train-00001-of-00001.parquet")
    with pytest.raises(UnsafeInputError, match="FIFO"):
        open_lowra(tmp_path, "vit")
