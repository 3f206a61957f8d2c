"""ProbeGen zoo loaders on the fixtures (probegen.md §4): INR state dicts, CIFAR10-GS decoding and split
protocol, Wild Park checkpoints through the restricted unpickler (OmegaConf config without omegaconf)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.datasets import BenchmarkFormatError
from labkit.datasets.probegen_zoos import (
    INR_SHAPES,
    cifar10_gs_splits,
    load_cifar10_gs,
    load_inr_zoo,
    load_wild_park,
)
from labkit.safe_io import UnsafeInputError
from labkit.training import stack_states

FIX = Path(__file__).parent / "fixtures" / "probegen"
GS = FIX / "small-zoo-cifar10"


def test_inr_zoo():
    params, labels = load_inr_zoo(FIX, FIX / "fmnist_splits.json", "train")
    assert labels.tolist() == [6, 1]  # an int and a digit string, both cast
    assert {k: tuple(v.shape[1:]) for k, v in params.items()} == INR_SHAPES and params["seq.0.weight"].shape[0] == 2
    sd = torch.load(FIX / "fmnist_inrs/train/model_1.pth", weights_only=True)
    assert torch.equal(params["seq.1.weight"][1], sd["seq.1.weight"])


def test_inr_wrong_schema_and_truncated(tmp_path):
    shutil.copytree(FIX / "fmnist_inrs", tmp_path / "fmnist_inrs")
    split = FIX / "fmnist_splits.json"
    p = tmp_path / "fmnist_inrs/val/model_2.pth"
    sd = torch.load(p, weights_only=True)
    sd["seq.0.weight"] = torch.zeros(16, 2)
    torch.save(sd, p)
    with pytest.raises(BenchmarkFormatError, match="not a DWSNets SIREN"):
        load_inr_zoo(tmp_path, split, "val")
    p.write_bytes((FIX / "fmnist_inrs/val/model_2.pth").read_bytes()[:300])
    with pytest.raises(BenchmarkFormatError, match="truncated"):
        load_inr_zoo(tmp_path, split, "val")
    with pytest.raises(BenchmarkFormatError, match="no 'holdout' entry"):
        load_inr_zoo(tmp_path, split, "holdout")


def test_cifar10_gs_decoding():
    params, labels = load_cifar10_gs(GS, split=None)
    w = np.load(GS / "weights.npy")
    assert params["sequential/conv2d_1/kernel:0"].shape == (12, 16, 16, 3, 3)
    assert params["sequential/dense/kernel:0"].shape == (12, 10, 16)
    tf = w[5, 160:160 + 2304].reshape(3, 3, 16, 16)  # HWIO
    assert torch.equal(params["sequential/conv2d_1/kernel:0"][5], torch.from_numpy(tf.transpose(3, 2, 0, 1)))
    assert torch.equal(params["sequential/dense/kernel:0"][5], torch.from_numpy(w[5, 4800:4960].reshape(16, 10).T))
    assert sum(v[0].numel() for v in params.values()) == 4970
    assert labels[3].item() == pytest.approx(0.25)


def test_cifar10_gs_split_protocol():
    order = np.array([int(t) for t in (GS / "nfn_cifar10_split.csv").read_text().split()])
    assert len(order) == 13 and order[0] == 0  # the header quirk: index 0 twice
    steps = np.array([86 if i % 3 else 0 for i in range(12)])
    s = cifar10_gs_splits(steps, order)
    final = [i for i in order if steps[i] == 86]
    assert s["test"].tolist() == final[len(final) // 2:]
    assert sorted(s["train"].tolist() + s["val"].tolist()) == sorted(final[: len(final) // 2])
    _, labels = load_cifar10_gs(GS, GS / "nfn_cifar10_split.csv", "test")
    assert labels.tolist() == pytest.approx([0.1 + 0.05 * i for i in s["test"]])


def test_cifar10_gs_truncated(tmp_path):
    shutil.copytree(GS, tmp_path / "gs")
    w = tmp_path / "gs" / "weights.npy"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(BenchmarkFormatError, match="truncated"):
        load_cifar10_gs(tmp_path / "gs", split=None)


def test_wild_park_safe_load():
    wp = load_wild_park(FIX / "cnn_wild", FIX / "cnn_park_splits.json", "train")
    assert wp.configs[0]["channels"] == [4, 8] and wp.configs[0]["activation"] == "relu"  # from a DictConfig
    assert wp.states[0]["layers.1.weight"].shape == (8, 4, 3, 3)
    assert wp.scores.tolist() == pytest.approx([0.4]) and wp.steps.tolist() == [10]
    test = load_wild_park(FIX / "cnn_wild", FIX / "cnn_park_splits.json", "test")
    assert test.configs[0]["kernel_size"] == 5  # a plain-dict config
    with pytest.raises(ValueError, match="different architectures"):
        stack_states(wp.states + test.states)


def test_wild_park_wrong_schema(tmp_path):
    (tmp_path / "c.pt").parent.mkdir(exist_ok=True)
    torch.save({"model": {}}, tmp_path / "c.pt")
    (tmp_path / "s.json").write_text(json.dumps({"test": {"path": ["c.pt"], "score": [0.5], "step": [1]}}))
    with pytest.raises(BenchmarkFormatError, match="not a Wild Park checkpoint"):
        load_wild_park(tmp_path, tmp_path / "s.json", "test")


def test_wild_park_checkpoint_extras():
    from labkit.datasets.inspection import inspect_path

    info = inspect_path(FIX / "cnn_wild/cifar10_zooV2/run_0/checkpoint_000000/checkpoint.pt")
    assert any(t["name"] == "model.fc.weight" and t["shape"] == [10, 8] for t in info["tensors"])


# ------------------------------------------------------------------ crafted datasets (issue 13, item 6b)


@pytest.mark.parametrize("rel", ["/etc/passwd", "../../outside.pth", "fmnist_inrs/../../outside.pth"])
def test_split_paths_cannot_leave_the_dataset(tmp_path, rel):
    shutil.copytree(FIX / "fmnist_inrs", tmp_path / "ds" / "fmnist_inrs")
    shutil.copyfile(FIX / "fmnist_inrs/train/model_1.pth", tmp_path / "outside.pth")
    (tmp_path / "s.json").write_text(json.dumps({"train": {"path": [rel], "label": [1]},
                                                 "test": {"path": [rel], "score": [0.5], "step": [1]}}))
    with pytest.raises(UnsafeInputError, match=r"s.json: path .* points outside"):
        load_inr_zoo(tmp_path / "ds", tmp_path / "s.json", "train")
    with pytest.raises(UnsafeInputError, match=r"s.json: path .* points outside"):
        load_wild_park(tmp_path / "ds", tmp_path / "s.json", "test")


def test_split_json_bad_values_name_the_file(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"train": {"path": ["fmnist_inrs/train/model_1.pth"],
                                                           "label": ["six"]}}))
    with pytest.raises(BenchmarkFormatError, match=r"s.json: label value 'six' is not an integer"):
        load_inr_zoo(FIX, tmp_path / "s.json", "train")
    (tmp_path / "s.json").write_text(json.dumps({"train": {"path": "fmnist_inrs", "label": [1]}}))
    with pytest.raises(BenchmarkFormatError, match=r"s.json: the train fields .* must be lists"):
        load_inr_zoo(FIX, tmp_path / "s.json", "train")
    (tmp_path / "s.json").write_text("[" * 100_000)
    with pytest.raises(BenchmarkFormatError, match=r"s.json: not valid JSON"):
        load_inr_zoo(FIX, tmp_path / "s.json", "train")


def test_cifar10_gs_split_index_out_of_range_names_file_and_index(tmp_path):
    (tmp_path / "split.csv").write_text("0\n3\n99\n")
    with pytest.raises(BenchmarkFormatError, match=r"split.csv: entry 3 is row index 99, outside 0..11"):
        load_cifar10_gs(GS, tmp_path / "split.csv", "test")
    (tmp_path / "split.csv").write_text("0\nseven\n")
    with pytest.raises(BenchmarkFormatError, match=r"split.csv: entry 2 \('seven'\) is not a row index"):
        load_cifar10_gs(GS, tmp_path / "split.csv", "test")
    with pytest.raises(BenchmarkFormatError, match="split row index 12 is outside 0..11"):
        cifar10_gs_splits(np.full(12, 86), np.array([0, 12]))


def _gs_copy(tmp_path):
    shutil.copytree(GS, tmp_path / "gs")
    return tmp_path / "gs"


def test_cifar10_gs_layout_shape_is_not_evaluated(tmp_path):
    gs = _gs_copy(tmp_path)
    text = (gs / "layout.csv").read_text().replace('"(3, 3, 1, 16)"', '"' + "-" * 100_000 + '1"')
    (gs / "layout.csv").write_text(text)
    with pytest.raises(BenchmarkFormatError, match=r"gs/layout.csv: line 2 \(sequential/conv2d/kernel:0\) spans"):
        load_cifar10_gs(gs, split=None)
    (gs / "layout.csv").write_text(text.replace("-" * 100_000 + "1", "(3, 3, 1, 16)").replace(",0,144,", ",x,144,"))
    with pytest.raises(BenchmarkFormatError, match="gs/layout.csv: line 2, column start_idx: 'x' is not a number"):
        load_cifar10_gs(gs, split=None)


def test_cifar10_gs_metrics_errors_name_the_file(tmp_path, monkeypatch):
    import gzip

    from labkit.datasets import probegen_zoos

    gs = _gs_copy(tmp_path)
    lines = gzip.decompress((gs / "metrics.csv.gz").read_bytes()).decode().splitlines()
    lines[4] = "86,abc,0.3,relu"
    (gs / "metrics.csv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(BenchmarkFormatError, match=r"gs/metrics.csv.gz: line 5, column test_accuracy: 'abc'"):
        load_cifar10_gs(gs, split=None)
    monkeypatch.setattr(probegen_zoos, "MAX_CSV_BYTES", 5000)  # a gzip bomb, scaled down
    (gs / "metrics.csv.gz").write_bytes(gzip.compress(b"step,test_accuracy\n" + b"86,0.5\n" * 10_000))
    with pytest.raises(BenchmarkFormatError, match=r"gs/metrics.csv.gz: decompresses to more than 5,000 bytes"):
        load_cifar10_gs(gs, split=None)


def test_wild_park_model_that_is_not_a_state_dict(tmp_path):
    torch.save({"model": ["not", "tensors"], "config": {}}, tmp_path / "c.pt")
    (tmp_path / "s.json").write_text(json.dumps({"test": {"path": ["c.pt"], "score": [0.5], "step": [1]}}))
    with pytest.raises(BenchmarkFormatError, match=r"c.pt: not a Wild Park checkpoint"):
        load_wild_park(tmp_path, tmp_path / "s.json", "test")
    torch.save({"model": {"w": torch.ones(1)}, "config": {}}, tmp_path / "c.pt")
    (tmp_path / "s.json").write_text(json.dumps({"test": {"path": ["c.pt"], "score": ["high"], "step": [1]}}))
    with pytest.raises(BenchmarkFormatError, match=r"s.json: score value 'high' is not a number"):
        load_wild_park(tmp_path, tmp_path / "s.json", "test")
