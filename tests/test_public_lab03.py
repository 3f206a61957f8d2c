"""Notebook 03 with ``data_source = "public"`` (issue 9, item 7): ProbeGen's zoos read from ``data_root("probegen")``.

The kit's loader fixtures (``tests/fixtures/probegen``: 2 / 1 / 1 INRs) are too small to train on (a validation
split needs 2 networks), so the data here is written by ``test_probegen_cli.write_public_probegen`` in the same
formats and the same layout: ``$LABKIT_DATA/probegen/{fmnist_inrs/, fmnist_splits.json, small-zoo-cifar10/}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import notebook_text
from test_probegen_cli import write_public_probegen

from labkit.cli import main
from labkit.nbtools import exercise_ids, read_notebook
from labkit.runner import run_notebook

NB03 = Path(__file__).resolve().parents[1] / "notebooks" / "03_probegen.ipynb"




@pytest.mark.notebook
def test_probegen_notebook_on_public_zoos(tmp_path, monkeypatch, kit_home, capsys):
    data = tmp_path / "data"
    write_public_probegen(data / "probegen")
    monkeypatch.setenv("LABKIT_DATA", str(data))
    run = run_notebook(NB03, "full", runs_root=tmp_path / "runs",
                       parameters={"data_source": "public", "public_epochs": 2, "public_probes": 8})
    assert run.ok, run.error
    result = json.loads(run.metrics.read_text())
    m = result["metrics"]
    assert result["exercises"] == dict.fromkeys(exercise_ids(read_notebook(NB03)), "passed")
    for method in ("probegen", "vanilla", "synthetic"):
        assert 0.0 <= m[f"{method}.public.fmnist_inrs_accuracy"]["value"] <= 100.0
        assert -1.0 <= m[f"{method}.public.cnn_tau"]["value"] <= 1.0
    assert -1.0 <= m["statnn.public.cnn_tau"]["value"] <= 1.0
    assert not any(k in m for k in ("probegen.inr_accuracy", "probegen.cnn_tau"))  # no mini-zoo metrics
    text = notebook_text(run.output)
    assert "fmnist_inrs train 40, val 12, test 12 networks" in text
    assert "CIFAR10-GS: NG-T τ = 0.935" in text and "fmnist_inrs: NFN 75.6 %" in text
    assert "extra generator depths (1, 4) are skipped" in text

    # the same numbers as `labkit probegen` with the same settings (seed 1, evaluation every 500 steps)
    for args, key in ((["--inr", str(data / "probegen" / "fmnist_inrs")], "probegen.public.fmnist_inrs_accuracy"),
                      (["--cnn-zoo", str(data / "probegen" / "small-zoo-cifar10")], "probegen.public.cnn_tau")):
        out = tmp_path / "r.json"
        assert main(["probegen", *args, "--probes", "8", "--epochs", "2", "--device", "cpu", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["test"] == pytest.approx(m[key]["value"], abs=1e-6)  # accuracy in % both
    capsys.readouterr()


@pytest.mark.notebook
def test_probegen_notebook_without_the_data_says_where_to_get_it(tmp_path, monkeypatch, kit_home):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "empty"))
    run = run_notebook(NB03, "smoke", runs_root=tmp_path / "runs", parameters={"data_source": "public"})
    assert not run.ok
    assert "BenchmarkMissingError" in run.error
    assert f"INR zoo folder not found at {tmp_path / 'empty' / 'probegen' / 'fmnist_inrs'}" in run.error
    assert "download DWSNets' Dropbox mnist-inrs.zip / fmnist_inrs.zip" in run.error
    assert "meant for the full profile (this run is 'smoke')" in notebook_text(run.output)
