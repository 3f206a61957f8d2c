"""digit-trees: manifest, Model-J metadata, peft adapters, determinism and resume of a smoke build."""

import ast
import dataclasses
import json

import pytest
import torch

import labkit.zoo as zoo
from labkit.data import CLASS_NAMES, load_digits_split
from labkit.zoo.recipes import digit_trees
from labkit.zoo.store import ZooStore


class Killed(Exception):
    pass


def build_interrupted(home, after: int):
    """Build, 'killing' the build after ``after`` models were written; then build again to completion."""
    calls = {"n": 0}
    save_model, save_adapter = ZooStore.save_model, ZooStore.save_adapter

    def counting(fn):
        def wrapped(self, *a, **kw):
            if calls["n"] >= after:
                raise Killed
            calls["n"] += 1
            return fn(self, *a, **kw)
        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ZooStore, "save_model", counting(save_model))
        mp.setattr(ZooStore, "save_adapter", counting(save_adapter))
        with pytest.raises(Killed):
            zoo.build("digit-trees", profile="smoke", home=home)
    partial = ZooStore.open("digit-trees", "smoke", dataclasses.asdict(digit_trees.settings("smoke")), home=home)
    assert len(partial) == after and not partial.complete
    return zoo.build("digit-trees", profile="smoke", home=home)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    return zoo.build("digit-trees", profile="smoke", home=tmp_path_factory.mktemp("trees"))


def test_manifest_is_complete(store):
    cfg = digit_trees.settings("smoke")
    assert store.info["settings"] == json.loads(json.dumps(dataclasses.asdict(cfg))) and zoo.recorded_settings(store) == cfg
    rows = {r["id"]: r for r in store.rows()}
    per_root = 1 + cfg.children + cfg.lora_children + cfg.grand_parents * (cfg.grandchildren + cfg.lora_grandchildren)
    assert len(rows) == len(digit_trees.ROOTS) * per_root and store.complete
    assert {r["id"] for r in rows.values() if r["parent"] is None} == set(digit_trees.ROOTS)
    assert all(rows[root]["hparams"]["batch_size"] == cfg.root_batch_size for root in digit_trees.ROOTS)
    for r in rows.values():
        for key in ("tree", "parent", "split", "labels", "hparams", "train_acc", "test_acc", "flag", "sha256"):
            assert key in r, f"{r['id']} lacks {key}"
        assert r["flag"] in ("ok", "bad")
        if r["parent"] is not None:
            parent = rows[r["parent"]]
            assert parent["tree"] == r["tree"] and r["depth"] == parent["depth"] + 1
            assert r["split"] in ("train", "val", "test") and len(r["labels"]) == 5
    kinds = {(r["depth"], r["kind"]) for r in rows.values()}
    assert {(0, "model"), (1, "model"), (1, "adapter"), (2, "model"), (2, "adapter")} <= kinds
    assert len({r["hparams"]["lr"] for r in rows.values()}) > 10, "hyper-parameters must vary per model"
    ranks = {r["hparams"]["rank"] for r in rows.values() if r["kind"] == "adapter"}
    assert ranks <= set(cfg.lora_ranks) and len(ranks) >= 2
    assert sum(r["flag"] == "ok" for r in rows.values()) >= 0.8 * len(rows)


def test_model_j_metadata_and_recorded_accuracy(store):
    data = load_digits_split()
    children = [r for r in store.rows() if r["kind"] == "model" and r["depth"] == 1][:3]
    for r in children:
        _, meta = store.load_model(r["id"])
        names = ast.literal_eval(meta["dataset_chosen_targets"])
        assert names == r["labels"] == [CLASS_NAMES[c] for c in r["classes"]]
        for key in ("lr", "weight_decay", "epochs", "augment_shift", "augment_noise", "seed"):
            assert meta[key] == str(r["hparams"][key])
        model = digit_trees.load_model(store, r["id"])
        mask = torch.isin(data.y_test, torch.tensor(r["classes"]))
        with torch.no_grad():
            acc = (model(data.X_test[mask]).argmax(-1) == data.y_test[mask]).float().mean().item()
        assert acc == pytest.approx(r["test_acc"], abs=1e-3)


def test_lora_adapters_load_with_peft(store):
    from peft import PeftModel

    data = load_digits_split()
    adapters = [r for r in store.rows() if r["kind"] == "adapter"]
    for r in (adapters[0], adapters[-1]):  # a LoRA child and a LoRA grandchild
        folder = store.path(r["id"])
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == f"labkit/digit-trees/{r['parent']}"
        assert config["r"] == r["hparams"]["rank"]
        base = digit_trees.load_model(store, r["parent"])
        with torch.no_grad():
            before = base(data.X_test)
        model = PeftModel.from_pretrained(base, str(folder))
        mask = torch.isin(data.y_test, torch.tensor(r["classes"]))
        with torch.no_grad():
            out = model(data.X_test)
            acc = (out[mask].argmax(-1) == data.y_test[mask]).float().mean().item()
        assert (out - before).abs().max() > 1e-3, "the adapter must change the parent's outputs"
        assert acc == pytest.approx(r["test_acc"], abs=1e-3)


def test_interrupted_rebuild_gives_identical_files(store, tmp_path):
    torch.set_num_threads(1)
    again = build_interrupted(tmp_path, after=9)
    first = {r["id"]: r["files"] for r in store.rows()}
    second = {r["id"]: r["files"] for r in again.rows()}
    assert second == first
    assert again.verify_all() == []
