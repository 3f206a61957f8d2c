"""Model-J loader on the fixture (probex.md §4): hub-cache layout, metadata labels, SD LoRA bundles, errors."""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.datasets.model_j import (
    CIFAR100_CLASSES,
    SPLITS,
    open_model_j,
    parse_chosen_targets,
    read_header,
    read_tensors,
)
from labkit.safe_io import CorruptFileError, UnsafeInputError

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
    with pytest.raises(CorruptFileError, match="truncated"):
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


# ------------------------------------------------------------------ crafted files (issue 13, items 4 and 6b)


def test_parse_chosen_targets_accepts_only_a_list_of_strings():
    assert parse_chosen_targets("['apple', \"bee\"]", "f") == ("apple", "bee")
    assert parse_chosen_targets("('apple',)", "f") == ("apple",) and parse_chosen_targets("[]", "f") == ()
    assert parse_chosen_targets("[\n 'a',\n 'b',\n]", "f") == ("a", "b")
    for text in ("5", "'apple'", "-" * 50_000 + "1", "['a', ['b']]", "[b'x']", "['a' 'b']", "['a'] + ['b']",
                 "__import__('os')", "[f'{x}']", "['a',,'b']", "['a'", "['a'] ['b']", "['a')", "[# x\n'a']"):
        with pytest.raises(BenchmarkFormatError, match=r"^m\.safetensors: dataset_chosen_targets must be the repr"):
            parse_chosen_targets(text, "m.safetensors")
    with pytest.raises(BenchmarkFormatError, match="200,001 characters, more than the 100,000"):
        parse_chosen_targets("-" * 200_000 + "1", "m.safetensors")


def test_unary_minus_bomb_in_the_metadata(tmp_path):
    _, path = _copy(tmp_path)
    save_file(load_file(str(path)), str(path), metadata={"dataset_chosen_targets": "-" * 200_000 + "1"})
    with pytest.raises(BenchmarkFormatError, match=rf"^{re.escape(str(path))}: dataset_chosen_targets holds"):
        open_model_j(tmp_path, "SupViT").models("val")
    save_file(load_file(str(path)), str(path), metadata={"dataset_chosen_targets": "5"})
    with pytest.raises(BenchmarkFormatError, match="repr of a list of class names, got '5'"):
        open_model_j(tmp_path, "SupViT").models("val")


def test_refs_main_cannot_leave_the_snapshots_folder(tmp_path):
    _, path = _copy(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(path.parent, elsewhere)  # a valid model outside the repo folder
    ref = path.parents[2] / "refs" / "main"
    for target in (str(elsewhere), f"../../../../{elsewhere.name}"):
        ref.write_text(target)
        with pytest.raises(UnsafeInputError, match=r"refs/main names snapshot .* points outside"):
            open_model_j(tmp_path, "SupViT").models("val")


def _raw_safetensors(path, header: str, data: bytes):
    raw = header.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def test_duplicate_tensor_names_are_refused(tmp_path):
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}'
    header = '{"w":' + entry % (0, 4) + ',"w":' + entry % (4, 8) + "}"
    path = _raw_safetensors(tmp_path / "d.safetensors", header, bytes(8))
    with pytest.raises(CorruptFileError, match=r"d.safetensors: the safetensors header names 'w' twice"):
        read_header(path)
    ok = _raw_safetensors(tmp_path / "ok.safetensors", '{"w":' + entry % (0, 4) + ',"v":' + entry % (4, 8) + "}",
                          bytes(8))
    assert read_header(ok)[0] == {"w": ("F32", [1]), "v": ("F32", [1])}
    big = tmp_path / "big.safetensors"
    big.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CorruptFileError, match="header of 1,000,000,000 bytes"):
        read_header(big)


@pytest.mark.timeout(60)
def test_fifo_and_device_are_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "f.safetensors")
    with pytest.raises(UnsafeInputError, match="FIFO"):
        read_header(tmp_path / "f.safetensors")
    (tmp_path / "z.safetensors").symlink_to("/dev/zero")
    with pytest.raises(UnsafeInputError, match="character device"):
        read_header(tmp_path / "z.safetensors")


def test_file_names_that_are_not_utf8(tmp_path):
    odd = tmp_path / os.fsdecode(b"d\xff")  # safe_open(str(path)) refused such names as "not valid UTF-8"
    shutil.copytree(FIX / "SupViT", odd / "SupViT")
    mj = open_model_j(odd, "SupViT")
    X, _, _ = mj.layer("train", DENSE)

    def original(p):
        return FIX / "SupViT" / p.relative_to(odd / "SupViT")

    assert torch.equal(X[1], load_file(str(original(mj.models("train")[1].path)))[DENSE])
    val = mj.models("val")[0].path
    name = odd / os.fsdecode(b"m\xff.safetensors")
    shutil.copyfile(val, name)
    assert read_header(name) == read_header(original(val))
    assert torch.equal(read_tensors(name, [DENSE])[DENSE], load_file(str(original(val)))[DENSE])
    name.write_bytes(name.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"d\\udcff/m\\udcff.safetensors is not a readable"):
        read_header(name)
