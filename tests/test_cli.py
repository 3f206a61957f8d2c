"""The `labkit` command and the papermill runner, on small notebooks written by the test."""

import json
import subprocess
import sys

import pytest
from conftest import make_notebook

from labkit.cli import main
from labkit.runner import cell_durations

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
    durations = cell_durations(tmp_path / "runs" / "smoke" / "00_start_here.ipynb")  # what bench_course lists
    assert [line for _, _, line in durations][-2:] == ["import labkit", "labkit.report.record('demo.answer', 6 * 7, paper=42.0)"]
    assert all(seconds >= 0 for _, seconds, _ in durations)
    assert "without encryption" not in res.stdout + res.stderr  # the kernel's TCP warning goes to kernel.log
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
    (["run", "--profile", "tiny"], "labkit run: argument --profile: invalid choice: 'tiny'"),
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
    path = store.path("m0") / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"garbage")
    assert main(["zoo", "verify", str(store.root)]) == 1
    assert "has 7 bytes, the manifest records" in capsys.readouterr().err
    path.write_bytes(data[:-1] + b"\x01")
    assert main(["zoo", "verify", str(store.root)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err


def test_timeout_dead_kernel_and_bad_metrics_are_one_line_each(kit_home, tmp_path):
    """A cell past --timeout and a kernel that dies are named by notebook and cell, with no library traceback
    on the terminal (the kernel's own output goes to runs/<P>/<stem>/kernel.log)."""
    make_notebook(tmp_path / "notebooks" / "90_sleep.ipynb", "x = 1", "import time\ntime.sleep(30)", "y = 2")
    make_notebook(tmp_path / "notebooks" / "91_die.ipynb", "x = 1", "import os\nos._exit(1)", "y = 2")
    make_notebook(tmp_path / "notebooks" / "92_list.ipynb",
                  "import os\nopen(os.environ['LABKIT_METRICS'], 'w').write('[1, 2]')")
    res = labkit_cli("run", "90_sleep", "91_die", "92_list", "--profile", "smoke", "--timeout", "2", cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 4, res.stderr
    assert lines[0].startswith("labkit run: 90_sleep failed in cell In [4] (`import time`): timed out after 2 s")
    assert lines[1].startswith("labkit run: 91_die failed in cell In [4] (`import os`): the kernel died")
    assert "runs/smoke/91_die/kernel.log" in lines[1]
    assert lines[2].startswith("labkit run: 92_list left a JSON list in ") and "metrics.json" in lines[2]
    assert lines[3] == "labkit run: 3 of 3 notebooks failed: 90_sleep, 91_die, 92_list"
    assert "Kernel died" in (tmp_path / "runs" / "smoke" / "91_die" / "kernel.log").read_text()
    metrics = json.loads((tmp_path / "runs" / "smoke" / "90_sleep" / "metrics.json").read_text())
    assert metrics["ok"] is False and "timed out after 2 s" in metrics["error"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_timeout_must_be_a_positive_number(value, capsys):
    assert main(["run", "--timeout", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit run: argument --timeout: ") and err.count("\n") == 1
    assert "positive" in err or "not a number" in err


def test_unexpected_error_is_one_line_unless_debugging(monkeypatch, capsys):
    from labkit import cli

    def broken(args):
        raise TypeError("unsupported operand\nsecond line \x1b[2J")

    monkeypatch.setattr(cli, "_cmd_report", broken)
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    assert main(["report"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert err.startswith("labkit report: internal error: TypeError: unsupported operand\\nsecond line \\x1b[2J — "
                          "this is a bug in labkit; run `labkit --debug ...` to see the traceback")
    monkeypatch.setenv("LABKIT_DEBUG", "1")  # the environment variable works like --debug
    assert main(["report"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and 'in broken' in err and "\x1b" not in err
    assert err.splitlines()[-1].startswith("labkit report: internal error: TypeError: unsupported operand")


def test_expected_errors_are_printable_and_one_line(monkeypatch, capsys):
    from labkit import cli

    def bad_file(args):
        raise FileNotFoundError("runs/\x1b]0;pwned\x07/metrics.json does not exist\nat all")

    monkeypatch.setattr(cli, "_cmd_report", bad_file)
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err == "labkit report: runs/\\x1b]0;pwned\\x07/metrics.json does not exist\\nat all\n"


def test_a_non_finite_result_is_refused_with_its_field(capsys):
    from labkit.cli import _emit

    with pytest.raises(ValueError, match=r"the result's dsire\.splits\[1\] is nan, not a number"):
        _emit({"dsire": {"mae": 1.0, "splits": [0.5, float("nan")]}}, None)
    assert capsys.readouterr().out == ""
    _emit({"ok": 1.0, "none": None}, None)
    assert json.loads(capsys.readouterr().out) == {"ok": 1.0, "none": None}
