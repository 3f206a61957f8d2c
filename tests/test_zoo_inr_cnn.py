"""inr and cnn-zoo smoke builds: ground truth, reloaded models reproduce what the manifest says, determinism."""

import dataclasses
import json

import pytest
import torch

import labkit.zoo as zoo
from labkit.data import load_digits_split
from labkit.models import pixel_coordinates
from labkit.zoo.recipes import cnn_zoo, inr
from labkit.zoo.store import ZooStore


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_digits_split()


def test_inr_zoo(tmp_path, digits):
    store = zoo.build("inr", profile="smoke", home=tmp_path / "a")
    cfg = inr.settings("smoke")
    assert store.info["settings"] == dataclasses.asdict(cfg) and zoo.recorded_settings(store) == cfg
    rows = store.rows()
    assert len(rows) == 10 * cfg.per_class
    assert {r["label"] for r in rows} == set(range(10))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows[:5]:
        state, meta = store.load_model(r["id"])
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            "seq.0.weight": (32, 2), "seq.0.bias": (32,), "seq.1.weight": (32, 32), "seq.1.bias": (32,),
            "seq.2.weight": (1, 32), "seq.2.bias": (1,)}
        assert meta["label"] == str(r["label"])
        image = (digits.X_train if r["image"]["source"] == "train" else digits.X_test)[r["image"]["row"]]
        with torch.no_grad():
            recon = inr.load_model(store, r["id"])(pixel_coordinates())[:, 0]
        mse = (recon - image).pow(2).mean().item()
        assert mse == pytest.approx(r["final_loss"], abs=1e-6) and mse < 1e-3
    again = zoo.build("inr", profile="smoke", home=tmp_path / "b")
    assert {r["id"]: r["sha256"] for r in again.rows()} == {r["id"]: r["sha256"] for r in rows}


def test_cnn_zoo(tmp_path, digits):
    store = zoo.build("cnn-zoo", profile="smoke", home=tmp_path / "a")
    rows = store.rows()
    cfg = cnn_zoo.settings("smoke")
    assert store.info["settings"] == json.loads(json.dumps(dataclasses.asdict(cfg))) and zoo.recorded_settings(store) == cfg
    assert len(rows) == cfg.n_models
    assert len({r["hparams"]["activation"] for r in rows}) >= 3 and len({r["hparams"]["width"] for r in rows}) >= 2
    accs = [r["test_acc"] for r in rows]
    assert max(accs) > 0.8 and max(accs) - min(accs) > 0.3, "the zoo must span a range of generalisation"
    for r in rows[:4]:
        model = cnn_zoo.load_model(store, r["id"])
        with torch.no_grad():
            acc = (model(digits.X_test).argmax(-1) == digits.y_test).float().mean().item()
            train = (model(digits.X_train).argmax(-1) == digits.y_train).float().mean().item()
        assert acc == pytest.approx(r["test_acc"], abs=1e-3) and train == pytest.approx(r["train_acc"], abs=1e-3)
        _, meta = store.load_model(r["id"])
        assert meta["config.activation"] == r["hparams"]["activation"]
    assert all((r["flag"] == "bad") == (r["test_acc"] <= cfg.bad_at_or_below) for r in rows)

    # resume: a build stopped after 5 models and run again writes the same files as the fresh build
    calls = {"n": 0}
    original = ZooStore.save_model

    def stop_after_five(self, *a, **kw):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ZooStore, "save_model", stop_after_five)
        with pytest.raises(KeyboardInterrupt):
            zoo.build("cnn-zoo", profile="smoke", home=tmp_path / "b")
    again = zoo.build("cnn-zoo", profile="smoke", home=tmp_path / "b")
    assert {r["id"]: r["sha256"] for r in again.rows()} == {r["id"]: r["sha256"] for r in rows}
