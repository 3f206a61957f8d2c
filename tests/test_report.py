import json

import pytest

import labkit
from labkit import report
from labkit.report import ReportError, load_runs, write_report


def test_record_writes_metrics_file_atomically(kit_home, tmp_path, monkeypatch, capsys):
    target = tmp_path / "runs" / "smoke" / "04_dsire" / "metrics.json"
    monkeypatch.setenv("LABKIT_METRICS", str(target))
    labkit.setup("smoke", lab="04")
    assert report.record("dsire.mae", 1.9, paper=1.48, higher_is_better=False, note="tiny") == 1.9
    assert "recorded dsire.mae = 1.9 (paper: 1.48)" in capsys.readouterr().out
    data = json.loads(target.read_text())
    assert data["metrics"]["dsire.mae"] == {"value": 1.9, "paper": 1.48, "higher_is_better": False, "note": "tiny"}
    assert data["profile"] == "smoke" and data["device"] == "cpu" and data["notebook"] == "04_dsire"
    assert data["seconds"] >= 0
    assert not list(target.parent.glob(".*tmp"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "high", None])
def test_record_rejects_non_numbers(kit_home, value):
    labkit.setup("smoke", quiet=True)
    with pytest.raises(ValueError, match="metric 'x'"):
        report.record("x", value)


def test_setup_starts_a_fresh_run(kit_home):
    labkit.setup("smoke", quiet=True)
    report.record("a", 1)
    labkit.setup("smoke", quiet=True)
    assert report.metrics() == {}


def test_setup_says_where_metrics_go_and_can_leave_them_alone(kit_home, tmp_path, monkeypatch, capsys):
    cfg = labkit.setup("smoke", lab="04")
    assert capsys.readouterr().out.rstrip().endswith("| recording metrics in memory ($LABKIT_METRICS unset)")
    assert cfg.record and cfg.metrics_file is None
    report.record("a", 1)
    target = tmp_path / "metrics.json"
    monkeypatch.setenv("LABKIT_METRICS", str(target))
    cfg = labkit.setup("smoke", lab="04", record=False)
    assert capsys.readouterr().out.rstrip().endswith("| metrics not recorded")
    assert not cfg.record and list(report.metrics()) == ["a"] and not target.exists()
    cfg = labkit.setup("smoke", lab="04")
    assert capsys.readouterr().out.rstrip().endswith(f"| recording metrics to {target}")
    assert cfg.metrics_file == target and report.metrics() == {} and target.is_file()


def _fake_run(root, stem, metrics, seconds=3.0):
    path = root / "smoke" / stem / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"notebook": stem, "profile": "smoke", "device": "cpu", "seconds": seconds,
                                "metrics": metrics, "exercises": {"x": "passed"}}))


def test_report_lists_every_metric_in_course_order(tmp_path):
    _fake_run(tmp_path, "05_spectral_detuning", {"sd.w_error": {"value": 0.01, "paper": 1e-5}})
    _fake_run(tmp_path, "00_start_here", {"start.test_accuracy": {"value": 0.97, "paper": None,
                                                                  "higher_is_better": True}})
    runs = load_runs(tmp_path / "smoke")
    assert [r["notebook"] for r in runs] == ["00_start_here", "05_spectral_detuning"]
    out = write_report(tmp_path, "smoke")
    md = (tmp_path / "smoke" / "report.md").read_text()
    assert md.index("start.test_accuracy") < md.index("sd.w_error")
    assert "| 05 Spectral DeTuning | `sd.w_error` | 0.01 | 1.000e-05 |" in md
    html = out.read_text()
    assert out.name == "report.html" and "<td>0.97</td>" in html and "00_start_here" in html


def test_report_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(ReportError, match="labkit run --profile smoke"):
        write_report(tmp_path, "smoke")


def test_report_on_corrupt_metrics_file(tmp_path):
    path = tmp_path / "smoke" / "00_start_here" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": ')
    with pytest.raises(ReportError, match="cannot read .*metrics.json"):
        write_report(tmp_path, "smoke")


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "holds a JSON list, not the object labkit writes"),
    ("3.5", "holds a JSON float, not the object labkit writes"),
    ('{"metrics": [1, 2]}', "'metrics' is a list; it must map each metric name to an object"),
    ('{"metrics": {"a": 1.0}}', "metric 'a' is a float, not an object"),
    ('{"metrics": {"a": {"value": "high"}}}', "metric 'a': value must be a finite number, got 'high'"),
    ('{"metrics": {"a": {"value": NaN}}}', "metric 'a': value must be a finite number, got nan"),
    ('{"metrics": {"a": {"value": 1, "higher_is_better": []}}}', "higher_is_better must be true, false or null"),
    ('{"metrics": {}, "seconds": "slow"}', "'seconds' is 'slow', not what labkit writes"),
    (b"\xff\xfe{", "cannot read"),
])
def test_report_names_a_malformed_metrics_file(tmp_path, monkeypatch, capsys, content, message):
    from labkit.cli import main

    path = tmp_path / "runs" / "smoke" / "\x1b[2J04_dsire" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ReportError, match="metrics.json"):
        load_runs(tmp_path / "runs" / "smoke")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert err.startswith("labkit report: ") and "\\x1b[2J04_dsire/metrics.json" in err and message in err, err
