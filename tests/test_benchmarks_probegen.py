"""ProbeGen zoo loaders on the fixtures (probegen.md §4): INR state dicts, CIFAR10-GS decoding and split
protocol, Wild Park checkpoints through the restricted unpickler (OmegaConf config without omegaconf)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.benchmarks import BenchmarkFormatError
from labkit.benchmarks.probegen_zoos import (
    INR_SHAPES,
    cifar10_gs_splits,
    load_cifar10_gs,
    load_inr_zoo,
    load_wild_park,
    stack_params,
)

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
    with pytest.raises(BenchmarkFormatError, match="different architectures"):
        stack_params(wp.states + test.states)


def test_wild_park_wrong_schema(tmp_path):
    (tmp_path / "c.pt").parent.mkdir(exist_ok=True)
    torch.save({"model": {}}, tmp_path / "c.pt")
    (tmp_path / "s.json").write_text(json.dumps({"test": {"path": ["c.pt"], "score": [0.5], "step": [1]}}))
    with pytest.raises(BenchmarkFormatError, match="not a Wild Park checkpoint"):
        load_wild_park(tmp_path, tmp_path / "s.json", "test")


def test_wild_park_checkpoint_extras():
    from labkit.benchmarks.inspect import inspect_path

    info = inspect_path(FIX / "cnn_wild/cifar10_zooV2/run_0/checkpoint_000000/checkpoint.pt")
    assert any(t["name"] == "model.fc.weight" and t["shape"] == [10, 8] for t in info["tensors"])
