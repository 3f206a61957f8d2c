"""Notebooks 04 and 05 with ``data_source = "public"`` (issue 9, item 7) on the benchmark fixtures laid out as
``labkit.datasets.data_root`` expects, the absent-data case, and ``run_notebook``'s extra parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import link_public_data, make_notebook, notebook_text

from labkit import paper_numbers
from labkit.cli import main
from labkit.nbtools import NotebookError, exercise_ids, read_notebook
from labkit.replicate.detune import detune_lowra
from labkit.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
NB04, NB05 = ROOT / "notebooks" / "04_dsire.ipynb", ROOT / "notebooks" / "05_spectral_detuning.ipynb"


@pytest.fixture
def public_data(tmp_path, monkeypatch, kit_home) -> Path:
    """$LABKIT_DATA with lora_wise/ and lowra/ linked to the fixtures (low_8 + medium_8; vit)."""
    return link_public_data(tmp_path / "data", monkeypatch, lora_wise=FIX / "lora_wise", lowra=FIX / "lowra")




def test_run_notebook_passes_extra_parameters(tmp_path, kit_home):
    nb = make_notebook(tmp_path / "p.ipynb", "import labkit\nlabkit.setup(profile)\n"
                       "labkit.report.record('x', x)", params='profile = "workshop"\nx = 1')
    run = run_notebook(nb, "smoke", runs_root=tmp_path / "runs", parameters={"x": 5, "profile": "full"})
    assert run.ok, run.error
    data = json.loads(run.metrics.read_text())
    assert data["metrics"]["x"]["value"] == 5.0 and data["profile"] == "smoke"  # profile is the argument's
    with pytest.raises(NotebookError, match="does not set y"):
        run_notebook(nb, "smoke", runs_root=tmp_path / "runs", parameters={"y": 1})


@pytest.mark.notebook
def test_dsire_notebook_on_the_lora_wise_fixture(public_data, tmp_path, capsys):
    run = run_notebook(NB04, "full", runs_root=tmp_path / "runs",
                       parameters={"data_source": "public", "public_config": "low_8"})
    assert run.ok, run.error
    data = json.loads(run.metrics.read_text())
    m = data["metrics"]
    assert data["exercises"] == dict.fromkeys(exercise_ids(read_notebook(NB04)), "passed")
    assert not any(k.startswith(("dsire.low", "dsire.medium", "dsire.defended")) for k in m)
    # the same numbers as the `labkit dsire` command on the same config (2 sets: 1 trains, as round(2·15/50))
    assert main(["dsire", "--lora-wise", str(public_data / "lora_wise"), "--config", "low_8",
                 "--n-train-sets", "1"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert m["dsire.public.mae"]["value"] == cli["dsire"]["mae_mean"] == 0.0
    assert m["dsire.public.accuracy"]["value"] == cli["dsire"]["accuracy_mean"] == 100.0
    assert m["frobenius_nn.public.mae"]["value"] == cli["frobenius_nn"]["mae_mean"]
    # Table 4 (rank 8) is not verified (labkit.paper_numbers): no "paper" value, and the note says why
    assert paper_numbers.paper("dsire.low_8.dsire.mae") is None
    assert m["dsire.public.mae"]["paper"] is None and "unverified" in m["dsire.public.mae"]["note"]
    assert m["dsire.public.accuracy"]["paper"] is None and "unverified" in m["dsire.public.accuracy"]["note"]
    assert m["frobenius_nn.public.mae"]["paper"] is None  # Table 4 has no baseline row
    text = notebook_text(run.output)
    assert "Skipped with data_source='public'" in text and "low_8 (6 LoRAs, 2 layers; paper: Table 4 (rank 8))" in text


@pytest.mark.notebook
def test_detuning_notebook_on_the_lowra_fixture(public_data, tmp_path):
    run = run_notebook(NB05, "full", runs_root=tmp_path / "runs", parameters={"data_source": "public"})
    assert run.ok, run.error
    data = json.loads(run.metrics.read_text())
    m = data["metrics"]
    assert set(m) == {"spectral_detuning.public.w_error", "mean_lora.public.w_error",
                      "spectral_detuning.public.converged_share"}
    assert data["exercises"] == dict.fromkeys(exercise_ids(read_notebook(NB05)), "passed")
    # the code path of `labkit detune`: the same numbers as detune_lowra with vit's defaults (5 LoRAs, end rank 16,
    # 300 iterations) on both fixture layers; 5 rank-16 LoRAs of a 40×32 layer are too few to recover it exactly
    direct = detune_lowra(FIX / "lowra", "vit", tmp_path / "direct", layers=[0, 1], device="cpu", seed=0)
    assert direct["lora_ids"] == [13, 6, 12, 14, 0] and direct["n_iters"] == 300 and direct["end_rank"] == 16
    assert m["spectral_detuning.public.w_error"]["value"] == pytest.approx(direct["w_error"], abs=1e-3)
    assert m["mean_lora.public.w_error"]["value"] == pytest.approx(direct["mean_lora_w_error"], abs=1e-6)
    assert m["spectral_detuning.public.w_error"]["value"] < m["mean_lora.public.w_error"]["value"] - 1
    assert m["spectral_detuning.public.w_error"]["paper"] is None  # no ViT number in the spec
    text = notebook_text(run.output)
    assert "Skipped with data_source='public'" in text and "LoRAs [13, 6, 12, 14, 0]" in text


@pytest.mark.notebook
def test_public_notebook_on_another_profile_says_so(public_data, tmp_path):
    run = run_notebook(NB05, "smoke", runs_root=tmp_path / "runs", parameters={"data_source": "public"})
    assert run.ok, run.error
    assert "the public benchmark is meant for the full profile" in notebook_text(run.output)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook, params, command", [
    (NB04, {"public_config": "low_16"}, "python data_scripts/download.py lora-wise --subset low_16 --dest"),
    (NB05, {"public_subset": "vit"}, "python data_scripts/download.py lowra --subset vit --dest"),
])
def test_absent_benchmark_stops_at_the_data_cell_naming_the_download(notebook, params, command, tmp_path,
                                                                    monkeypatch, kit_home):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "nothing"))
    run = run_notebook(notebook, "full", runs_root=tmp_path / "runs", parameters={"data_source": "public", **params})
    assert not run.ok
    assert "BenchmarkMissingError" in run.error and command in run.error, run.error
    assert json.loads(run.metrics.read_text())["metrics"] == {}
