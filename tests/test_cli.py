"""The `labkit` command and the papermill runner, on small notebooks written by the test."""

import json
import subprocess
import sys

import pytest
from conftest import make_notebook

from labkit.cli import main

pytestmark = pytest.mark.notebook


def labkit_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_run_then_report(kit_home, tmp_path):
    make_notebook(tmp_path / "notebooks" / "00_start_here.ipynb",
                  "import labkit\ncfg = labkit.setup(profile, lab='00')",
                  "labkit.report.record('demo.answer', 6 * 7, paper=42.0)\nprint(cfg.profile)")
    res = labkit_cli("run", "--profile", "smoke", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    executed = json.loads((tmp_path / "runs" / "smoke" / "00_start_here.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and 'profile = "smoke"' in "".join(injected[0]["source"])
    metrics = json.loads((tmp_path / "runs" / "smoke" / "00_start_here" / "metrics.json").read_text())
    assert metrics["metrics"]["demo.answer"]["value"] == 42.0 and metrics["profile"] == "smoke"
    assert metrics["device"] == "cpu" and metrics["seconds"] > 0 and metrics["ok"] is True
    rep = labkit_cli("report", "--profile", "smoke", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    last = rep.stdout.strip().splitlines()[-1]
    assert last.endswith("runs/smoke/report.html")
    assert "demo.answer" in (tmp_path / "runs" / "smoke" / "report.md").read_text()


def test_failing_cell_is_named_and_exit_is_nonzero(kit_home, tmp_path):
    make_notebook(tmp_path / "notebooks" / "09_broken.ipynb", "x = 1", "raise ValueError('boom here')", "y = 2")
    res = labkit_cli("run", "09_broken", "--profile", "smoke", cwd=tmp_path)
    assert res.returncode == 1
    assert "09_broken failed in cell In [4] (`raise ValueError('boom here')`): ValueError: boom here" in res.stderr
    metrics = json.loads((tmp_path / "runs" / "smoke" / "09_broken" / "metrics.json").read_text())
    assert metrics["ok"] is False and "boom here" in metrics["error"]


@pytest.mark.parametrize("args, message", [
    (["run", "--profile", "tiny"], "unknown profile 'tiny'"),
    (["run", "nope", "--profile", "smoke"], "notebook not found: 'nope'"),
    (["report", "--profile", "smoke"], "no metrics under"),
    (["zoo", "build", "no-such-recipe", "--profile", "smoke"], "unknown zoo recipe 'no-such-recipe'"),
    (["zoo", "verify", "."], "is not a labkit zoo"),
])
def test_bad_input_is_one_clear_line(kit_home, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_notebook_without_parameters_cell(kit_home, tmp_path, monkeypatch, capsys):
    make_notebook(tmp_path / "notebooks" / "08_noparams.ipynb", "x = 1", params=None)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "08_noparams", "--profile", "smoke"]) == 2
    assert "has no cell tagged 'parameters'" in capsys.readouterr().err


def test_zoo_verify_reports_a_corrupt_file(kit_home, tmp_path, capsys):
    import torch

    from labkit.zoo.store import ZooStore

    store = ZooStore.open("demo", "smoke", {}, home=tmp_path)
    store.save_model("m0", {"w": torch.ones(3)})
    assert main(["zoo", "verify", str(store.root)]) == 0
    (store.path("m0") / "model.safetensors").write_bytes(b"garbage")
    assert main(["zoo", "verify", str(store.root)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err
