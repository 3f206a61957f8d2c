"""Notebook 02 with ``data_source = "public"`` (issue 9, item 7) on the Model-J fixture laid out as
``labkit.datasets.data_root`` expects, and the absent-data case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import link_public_data, notebook_text

from labkit.methods import probex as px
from labkit.nbtools import exercise_ids, read_notebook
from labkit.replicate.probex import PAPER, train_learner
from labkit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "model_j"
NB02 = ROOT / "notebooks" / "02_probex.ipynb"
VIT_LAYER = "vit.encoder.layer.7.attention.output.dense.weight"

torch.set_num_threads(1)


@pytest.fixture
def data(tmp_path, monkeypatch, kit_home) -> Path:
    """$LABKIT_DATA with model_j/ linked to the fixture (SupViT and SD_200)."""
    return link_public_data(tmp_path / "data", monkeypatch, model_j=FIX)




@pytest.mark.notebook
def test_probex_notebook_on_the_model_j_fixture(data, tmp_path):
    run = run_notebook(NB02, "full", runs_root=tmp_path / "runs",
                       parameters={"data_source": "public", "public_layers": [1, VIT_LAYER], "public_epochs": 60})
    assert run.ok, run.error
    result = json.loads(run.metrics.read_text())
    m = result["metrics"]
    assert set(m) == {"probex.accuracy", "dense_expert.accuracy", "statnn.accuracy"}
    assert result["exercises"] == dict.fromkeys(exercise_ids(read_notebook(NB02)), "passed")
    assert m["probex.accuracy"]["paper"] == pytest.approx(PAPER["SupViT"]["probex"] / 100)
    assert m["statnn.accuracy"]["paper"] is None and "unverified" in m["statnn.accuracy"]["note"]
    assert "MVProbe rerun, not the paper" in m["probex.accuracy"]["note"]
    for key in m:  # 2 test models × 100 labels
        assert 0 <= m[key]["value"] <= 1 and m[key]["value"] * 200 == pytest.approx(round(m[key]["value"] * 200))
    text = notebook_text(run.output)
    assert "Model-J SupViT from" in text and "6 models" in text
    assert "Skipped with data_source='public': the mixture of experts" in text
    assert "Skipped with data_source='public': zero-shot needs the concept zoo" in text
    assert "meant for the full profile" not in text

    # the recorded ProbeX accuracy is the command's trainer at the layer chosen on val
    from labkit.datasets.model_j import open_model_j

    mj = open_model_j(FIX, "SupViT")
    note = m["probex.accuracy"]["note"]
    layer = next(name for name in (VIT_LAYER, "vit.embeddings.position_embeddings")
                 if f"layer {name} (chosen" in note)
    split = {s: mj.layer(s, layer) for s in ("train", "val", "test")}
    settings = dict(lr=1e-3, weight_decay=1e-5, batch_size=128, epochs=60, eval_every=25, seed=0)
    model, _ = train_learner("probex", *split["train"][:2], *split["val"][:2], device="cpu", **settings)
    assert m["probex.accuracy"]["value"] == pytest.approx(px.probex_accuracy(model, *split["test"][:2]))


@pytest.mark.notebook
def test_probex_notebook_without_the_download_names_the_command(tmp_path, monkeypatch, kit_home):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "empty"))
    run = run_notebook(NB02, "workshop", runs_root=tmp_path / "runs", parameters={"data_source": "public"})
    assert not run.ok
    assert "BenchmarkMissingError" in run.error
    assert "python data_scripts/download.py model-j --subset SupViT" in run.error
    assert "meant for the full profile" in notebook_text(run.output)
