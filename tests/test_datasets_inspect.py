"""``labkit inspect``: every fixture format, the kit's own zoos and peft adapters, and refusals."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from labkit.cli import main
from labkit.datasets import BenchmarkFormatError
from labkit.datasets.inspection import format_report, inspect_path
from labkit.datasets.safe_pickle import UnsafePickleError
from labkit.zoo.store import ZooStore

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("rel, fmt, check", [
    ("lowra", "LoWRA Bench", lambda i: set(i["lora_ranks"].values()) == {16}),
    ("lora_wise/medium/8/train-00000-of-00001.parquet", "LoRA-WiSE", lambda i: "6 LoRA models × 2 layers" in i["notes"][-1]),
    ("model_j/SupViT", "Model-J subset folder (discriminative)", lambda i: "train: 3 models" in i["notes"]),
    ("model_j/SD_200/val/model_idx_0002/pytorch_lora_weights.safetensors", "safetensors (LoRA weights)",
     lambda i: i["metadata"]["imagenet_class_id"] == "n01440764" and set(i["lora_ranks"].values()) == {2}),
    ("vthr/full_ft_model_graph.pkl", "VTHR model graph", lambda i: "5 nodes, 4 edges, 1 trees" in i["notes"]),
    ("vthr/models/Chld1bbb", "safetensors", lambda i: len(i["tensors"]) == 4),
    ("probegen/fmnist_inrs/train/model_0.pth", "torch checkpoint", lambda i: i["metadata"]["label"] == 6),
    ("probegen/cnn_wild/cifar10_zooV2/run_0/checkpoint_000000/checkpoint.pt", "torch checkpoint",
     lambda i: i["metadata"]["config"]["channels"] == [4, 8]),
    ("probegen/small-zoo-cifar10/weights.npy", "numpy array", lambda i: i["tensors"][0]["shape"] == [12, 4970]),
])
def test_fixture_formats(rel, fmt, check):
    info = inspect_path(FIX / rel)
    assert info["format"].startswith(fmt) and check(info)
    assert info["path"] in format_report(info)


def test_model_j_metadata_parsed():
    path = next((FIX / "model_j/SupViT/train").rglob("model.safetensors"))
    info = inspect_path(path)
    assert isinstance(info["metadata"]["dataset_chosen_targets"], list)
    assert {"name": "classifier.weight", "dtype": "F32", "shape": [4, 8]} in info["tensors"]


def test_kit_zoo_and_peft_adapter(tmp_path):
    store = ZooStore.open("toy", "smoke", {"n": 1}, home=tmp_path)
    store.save_model("m0", {"w": torch.ones(3, 2)}, row={"tree": 0}, metadata={"labels": [1, 2]})
    info = inspect_path(store.root)
    assert info["format"] == "labkit zoo" and info["tensors"][0]["shape"] == [3, 2]
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    save_file({"base_model.model.fc.lora_A.weight": torch.zeros(4, 6),
               "base_model.model.fc.lora_B.weight": torch.zeros(5, 4)}, str(ad / "adapter_model.safetensors"))
    info = inspect_path(ad)
    assert info["format"] == "peft adapter folder" and info["lora_ranks"] == {"base_model.model.fc": 4}
    assert info["metadata"]["r"] == 4


def test_refusals(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafePickleError, match="system"):
        inspect_path(tmp_path / "evil.pkl")
    assert main(["inspect", str(tmp_path / "evil.pkl")]) == 2
    assert "not in the allow-list" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "x.onnx").write_bytes(b"\0")
    with pytest.raises(BenchmarkFormatError, match="unknown file type .onnx"):
        inspect_path(tmp_path / "x.onnx")
    with pytest.raises(BenchmarkFormatError, match="no model files"):
        inspect_path(tmp_path)


def test_cli_json(capsys):
    assert main(["inspect", str(FIX / "lowra"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"].startswith("LoWRA Bench")


def test_non_regular_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it would block forever
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")  # reading it would never end
    for path, kind in ((fifo, r"FIFO \(named pipe\)"), (zero, "character device")):
        with pytest.raises(ValueError, match=f"is a {kind}, not a regular model file"):
            inspect_path(path)


def test_names_and_metadata_cannot_drive_the_terminal(tmp_path, capsys):
    path = tmp_path / "evil.safetensors"
    save_file({"w\x1b[2J\x1b]0;pwned\x07": torch.zeros(2)}, str(path), metadata={"note\x1b[31m": "red\x1b[0m\n"})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "w\\x1b[2J\\x1b]0;pwned\\x07" in out
    assert "note\\x1b[31m" in out and "red\\x1b[0m\\n" in out


def test_inspecting_a_damaged_zoo_reports_and_changes_nothing(tmp_path, capsys):
    store = ZooStore.open("toy", "smoke", {"n": 3}, home=tmp_path)
    for i in range(3):
        store.save_model(f"m{i}", {"w": torch.full((3, 2), float(i))})
    store.mark_complete()
    (store.models_dir / ".tmp-m3-1").mkdir()  # a build in progress
    lines = store.manifest_path.read_text().splitlines(keepends=True)
    store.manifest_path.write_text("".join(lines[:2]) + lines[2][:10])  # torn last line
    before = {p: p.read_bytes() if p.is_file() else None for p in store.root.rglob("*")}
    assert main(["inspect", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM:" in out and "half-written" in out and "lists 2 of them (missing: m2)" in out
    store.manifest_path.write_text(lines[0] + "{oops\n" + "".join(lines[1:]))  # a broken middle line
    assert main(["inspect", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert "manifest.jsonl: line 2 is not valid JSON" in err and "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.name for p in store.models_dir.iterdir()) == [".tmp-m3-1", "m0", "m1", "m2"]
    assert {p for p in store.root.rglob("*")} == set(before)
