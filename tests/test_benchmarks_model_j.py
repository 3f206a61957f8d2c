"""Model-J loader on the fixture (probex.md §4): hub-cache layout, metadata labels, SD LoRA bundles, errors."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from labkit.benchmarks import BenchmarkFormatError, BenchmarkMissingError
from labkit.benchmarks.model_j import CIFAR100_CLASSES, SPLITS, open_model_j, read_header

FIX = Path(__file__).parent / "fixtures" / "model_j"
DENSE = "vit.encoder.layer.7.attention.output.dense.weight"
SDQ = "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q"


def test_discriminative_hub_cache_layout():
    mj = open_model_j(FIX, "SupViT")
    assert mj.kind == "discriminative" and mj.splits == ["train", "val", "test"]
    train = mj.models("train")
    assert [m.idx for m in train] == [0, 1, 2] and all(len(m.labels) == 50 for m in train)
    assert mj.layer_names() == ["classifier.weight", "vit.embeddings.position_embeddings", DENSE]
    X, Y, idx = mj.layer("train", DENSE)
    assert X.shape == (3, 8, 8) and Y.shape == (3, 100) and idx.tolist() == [0, 1, 2]
    assert (Y.sum(1) == 50).all()
    names = ast.literal_eval(read_header(train[1].path)[1]["dataset_chosen_targets"])
    assert [CIFAR100_CLASSES[j] for j in torch.nonzero(Y[1]).flatten().tolist()] == sorted(names)
    assert torch.equal(X[1], load_file(str(train[1].path))[DENSE])
    # ProbeX's tensor → matrix rules: squeeze [1, 5, 8] → [5, 8]; 1-D → [d, 1]
    assert mj.layer("val", "vit.embeddings.position_embeddings")[0].shape == (1, 5, 8)
    assert mj.layer("val", "vit.encoder.layer.7.attention.output.dense.bias")[0].shape == (1, 8, 1)


def test_sd_lora_bundle_five_splits():
    mj = open_model_j(FIX, "SD_200")
    assert mj.kind == "lora" and mj.splits == list(SPLITS)
    assert set(mj.classes) == {"n01440764", "n02457408", "n03000134", "n04592741"}
    train = {lab for m in mj.models("train") for lab in m.labels}
    assert train.isdisjoint({lab for m in mj.models("test_holdout") for lab in m.labels})
    X, Y, _ = mj.layer("train", SDQ)
    sd = load_file(str(mj.models("train")[0].path))
    assert torch.allclose(X[0], sd[SDQ + ".lora.up.weight"] @ sd[SDQ + ".lora.down.weight"])
    assert Y.shape == (2, 4) and (Y.sum(1) == 1).all()


def test_missing_subset():
    with pytest.raises(BenchmarkMissingError, match="download.py model-j --subset DINO"):
        open_model_j(FIX, "DINO")


def _copy(tmp_path):
    shutil.copytree(FIX / "SupViT", tmp_path / "SupViT")
    mj = open_model_j(tmp_path, "SupViT")
    return mj, mj.models("val")[0].path


def test_truncated_file(tmp_path):
    _, path = _copy(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BenchmarkFormatError, match="truncated"):
        open_model_j(tmp_path, "SupViT").models("val")


def test_wrong_metadata(tmp_path):
    _, path = _copy(tmp_path)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"dataset_chosen_targets": "__import__('os')"})
    with pytest.raises(BenchmarkFormatError, match="repr of a list of class names"):
        open_model_j(tmp_path, "SupViT").models("val")
    save_file(tensors, str(path))
    with pytest.raises(BenchmarkFormatError, match="no 'dataset_chosen_targets'"):
        open_model_j(tmp_path, "SupViT").models("val")


def test_wrong_shape_across_models(tmp_path):
    _, path = _copy(tmp_path)
    tensors = load_file(str(path))
    tensors[DENSE] = torch.zeros(4, 8)
    meta = read_header(path)[1]
    save_file(tensors, str(path), metadata=meta)
    shutil.copytree(path.parents[2], tmp_path / "SupViT" / "train" / path.parents[2].name)
    with pytest.raises(BenchmarkFormatError, match="different architectures"):
        open_model_j(tmp_path, "SupViT").layer("train", DENSE)
