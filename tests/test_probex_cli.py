"""``labkit probex`` (labkit.replicate.probex) on the Model-J fixture and on an export of the digit-trees zoo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from labkit.cli import main
from labkit.methods import probex as px
from labkit.replicate.probex import PAPER, probex_model_j
from labkit.tree_probe import multi_hot
from labkit.zoo import export as E

torch.set_num_threads(1)
FIX = Path(__file__).resolve().parent / "fixtures" / "model_j"
VIT_LAYER = "vit.encoder.layer.7.attention.output.dense.weight"


@pytest.fixture(scope="module")
def trees(tiny_zoo):
    """The smoke digit-trees zoo (its mlp_a tree: 2 train, 1 val, 3 test full fine-tunes at depth 1)."""
    return tiny_zoo("digit-trees", tiny=False)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["probex", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_supvit_fixture_runs_with_baselines(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = _run(capsys, "--model-j", str(FIX), "--subset", "SupViT", "--layer", "2", "--epochs", "26",
                             "--baselines", "--device", "cpu", "--json", str(out))
    assert code == 0, err
    assert stdout == ""  # the JSON went to the file
    r = json.loads(out.read_text())
    assert r["layer"] == 2 and r["layer_name"] == VIT_LAYER and r["layer_shape"] == [8, 8] and r["n_layers"] == 3
    assert r["n_models"] == {"train": 3, "val": 1, "test": 2} and r["n_classes"] == 100
    assert r["settings"]["n_probes"] == r["settings"]["proj_dim"] == r["settings"]["rep_dim"] == 128
    assert r["settings"]["lr"] == 1e-3 and r["settings"]["weight_decay"] == 1e-5 and r["settings"]["epochs"] == 26
    for learner in (r["probex"], r["baselines"]["dense_expert"], r["baselines"]["statnn"]):
        assert 0 <= learner["test_accuracy"] <= 100 and learner["best_epoch"] in (0, 25)
        assert learner["test_accuracy"] * 2 == round(learner["test_accuracy"] * 2)  # k of 200 decisions, in %
    assert r["probex"]["n_params"] == px.probex_param_count(8, 8, 100)
    assert r["baselines"]["dense_expert"]["n_params"] == px.dense_expert_param_count(8, 8, 100)
    assert r["paper"]["probex"] == PAPER["SupViT"]["probex"] == 88.5 and r["paper"]["same_layer"] is False
    assert r["paper"]["statnn"] is None  # unverified: never printed as the paper's
    assert r["rerun"]["probex"] == 88.08 and r["rerun"]["layer"] == 59 and "not the paper" in r["rerun"]["source"]
    assert "ProbeX test accuracy" in err and "paper 88.50 %" in err


def test_layer_by_name_and_json_on_stdout(capsys):
    code, stdout, err = _run(capsys, "--model-j", str(FIX / "SupViT"), "--subset", "SupViT", "--layer",
                             "classifier.weight", "--epochs", "1", "--device", "cpu")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["layer"] == 0 and r["layer_shape"] == [4, 8] and r["baselines"] is None
    assert r["probex"]["best_epoch"] == 0


def test_command_equals_train_probex_on_the_exported_digit_zoo(trees, tmp_path, capsys):
    E.export_model_j(trees, tmp_path, roots=["mlp_a"])
    rows = [r for r in trees.rows() if r["tree"] == "mlp_a" and r["kind"] == "model" and r["depth"] == 1]
    splits = sorted({r["split"] for r in rows})
    assert {"train", "test"} <= set(splits)
    X = px.stack_layer([trees.load_model(r["id"])[0] for r in rows], "fc2.weight")
    Y = multi_hot([r["classes"] for r in rows], 10)
    m = {s: torch.tensor([r["split"] == s for r in rows]) for s in ("train", "val", "test")}
    has_val = bool(m["val"].any())
    model, hist = px.train_probex(X[m["train"]], Y[m["train"]], X[m["val"]] if has_val else None,
                                  Y[m["val"]] if has_val else None, epochs=30, eval_every=10, seed=3)
    expected = px.probex_accuracy(model, X[m["test"]], Y[m["test"]])

    names = sorted(k for k, v in trees.load_model(rows[0]["id"])[0].items() if k.endswith(".weight") and v.ndim >= 2)
    layer = names.index("fc2.weight")  # ProbeX's layer list: the sorted matrix weights
    code, stdout, err = _run(capsys, "--model-j", str(tmp_path), "--subset", "mlp_a", "--layer", str(layer),
                             "--epochs", "30", "--eval-every", "10", "--seed", "3", "--device", "cpu")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["layer_name"] == "fc2.weight" and r["n_classes"] == 10 and r["paper"] is None
    assert r["n_models"] == {s: int(m[s].sum()) for s in splits}
    assert r["probex"]["test_accuracy"] == round(100 * expected, 4)
    assert r["probex"]["best_epoch"] == hist.best_epoch
    assert 0 <= r["majority_baseline"] <= 100


def test_errors_are_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "--model-j", str(tmp_path / "absent"), "--subset", "SupViT")
    assert code == 2 and "python data_scripts/download.py model-j --subset SupViT" in err
    code, _, err = _run(capsys, "--model-j", str(FIX), "--subset", "Imaginary")
    assert code == 2 and "unknown Model-J subset 'Imaginary'" in err and "SupViT" in err
    code, _, err = _run(capsys, "--model-j", str(FIX / "SupViT"), "--subset", "DINO")
    assert code == 2 and "unknown Model-J subset 'DINO'" in err
    code, _, err = _run(capsys, "--model-j", str(FIX), "--subset", "SupViT")  # default layer 59 of 3
    assert code == 2 and "layer 59 is out of range" in err and "3 layers" in err
    code, _, err = _run(capsys, "--model-j", str(FIX), "--subset", "SupViT", "--layer", "no.such.weight")
    assert code == 2 and "has no layer 'no.such.weight'" in err
    code, _, err = _run(capsys, "--model-j", str(FIX), "--subset", "SD_200", "--layer", "0")
    assert code == 2 and "only the discriminative subsets" in err and "notebook 02" in err
    assert err.count("\n") == 1 and err.startswith("labkit probex: ")


def test_missing_test_split_and_bad_epochs(tmp_path):
    sub = tmp_path / "SupViT"
    shutil.copytree(FIX / "SupViT", sub)
    shutil.rmtree(sub / "test")
    with pytest.raises(ValueError, match="no 'test' split"):
        probex_model_j(tmp_path, "SupViT", 2, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="--epochs"):
        probex_model_j(FIX, "SupViT", 2, epochs=0, device="cpu")
