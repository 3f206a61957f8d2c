"""Metrics a lab claims, and the report that puts them next to the papers' numbers (DESIGN §6, §7).

Inside a notebook::

    labkit.report.record("dsire.mae", mae, paper=1.48, higher_is_better=False, note="mini-jungle, 50 sets")

``labkit run`` points ``$LABKIT_METRICS`` at ``runs/<profile>/<stem>/metrics.json``; every ``record`` rewrites
that file atomically, so a notebook that fails half-way still leaves what it measured. The format::

    {"notebook": "04_dsire", "lab": "04", "profile": "smoke", "device": "cpu", "seconds": 41.2,
     "metrics": {"dsire.mae": {"value": 1.9, "paper": 1.48, "higher_is_better": false, "note": "..."}},
     "exercises": {"04.features": "passed"}}

``labkit report`` reads every ``metrics.json`` of a profile and writes ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.course import LABS, lab_of_stem

__all__ = [
    "ReportError",
    "load_runs",
    "metrics",
    "record",
    "record_exercise",
    "render_html",
    "render_markdown",
    "write_json_atomic",
    "write_report",
]

METRICS_ENV = "LABKIT_METRICS"


class ReportError(RuntimeError):
    """Nothing to report, or an unreadable metrics file."""


@dataclass
class _Run:
    """The metrics of the notebook running in this process."""

    lab: str | None = None
    profile: str | None = None
    device: str | None = None
    started: float = field(default_factory=time.perf_counter)
    metrics: dict[str, dict] = field(default_factory=dict)
    exercises: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "notebook": LABS[self.lab].stem if self.lab in LABS else None,
            "lab": self.lab,
            "profile": self.profile,
            "device": self.device,
            "seconds": round(time.perf_counter() - self.started, 2),
            "metrics": self.metrics,
            "exercises": self.exercises,
        }


_RUN = _Run()


def start(cfg) -> None:
    """Begin a new run (called by ``labkit.setup``): forget earlier metrics, remember profile and device."""
    global _RUN
    _RUN = _Run(lab=cfg.lab, profile=cfg.profile, device=str(cfg.device))
    _flush()


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _flush() -> None:
    target = os.environ.get(METRICS_ENV)
    if target:
        write_json_atomic(Path(target), _RUN.as_json())


def record(key: str, value, paper: float | None = None, higher_is_better: bool | None = None,
           note: str = "") -> float:
    """Record one metric the lab claims; returns ``value`` as a float so a cell can keep using it."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError("metric key must be a non-empty string such as 'dsire.mae'")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"metric {key!r} is {value}; record a finite number (did training diverge?)")
    if paper is not None:
        paper = float(paper)
    _RUN.metrics[key] = {"value": value, "paper": paper, "higher_is_better": higher_is_better, "note": note}
    _flush()
    versus = f" (paper: {_fmt(paper)})" if paper is not None else ""
    print(f"recorded {key} = {_fmt(value)}{versus}")
    return value


def record_exercise(exercise_id: str, status: str) -> None:
    """Remember how an exercise went: 'passed', 'failed' or 'not attempted' (written by ``exercises.check``)."""
    _RUN.exercises[exercise_id] = status
    _flush()


def metrics() -> dict[str, dict]:
    """The metrics recorded so far in this run."""
    return dict(_RUN.metrics)


# ----------------------------------------------------------------------------------------------- the report


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)):
        return f"{x:.3e}"
    return f"{x:.4g}"


def load_runs(runs_dir: Path) -> list[dict]:
    """Every ``<stem>/metrics.json`` under ``runs_dir`` (one profile), in course order."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/metrics.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read {path}: {e}; re-run that notebook with `labkit run`") from None
        data.setdefault("notebook", path.parent.name)
        runs.append(data)
    order = {lab.stem: i for i, lab in enumerate(LABS.values())}
    return sorted(runs, key=lambda r: (order.get(r["notebook"], len(order)), r["notebook"]))


def _rows(runs: list[dict]):
    for run in runs:
        lab = lab_of_stem(run["notebook"])
        title = f"{lab.number} {lab.title}" if lab else run["notebook"]
        for key, m in run.get("metrics", {}).items():
            better = {True: "↑", False: "↓"}.get(m.get("higher_is_better"), "")
            yield title, key, _fmt(m.get("value")), _fmt(m.get("paper")), better, m.get("note", "")


def _runs_table(runs: list[dict]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for run in runs:
        ex = run.get("exercises", {})
        passed = sum(1 for s in ex.values() if s == "passed")
        out.append((run["notebook"], str(run.get("profile")), str(run.get("device")),
                    f"{run.get('seconds', float('nan')):.1f}", f"{passed}/{len(ex)}" if ex else "–"))
    return out


def render_markdown(runs: list[dict], profile: str) -> str:
    lines = [f"# labkit report — profile `{profile}`", "",
             "Every number below was measured by the notebook's own run; the paper's number is for comparison "
             "only (our zoos are miniature analogues unless the profile is `full`).", "",
             "| lab | metric | ours | paper | better | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c} | {d} | {e} | {f} |" for a, b, c, d, e, f in _rows(runs)]
    lines += ["", "## Runs", "", "| notebook | profile | device | seconds | exercises passed |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _runs_table(runs)]
    return "\n".join(lines) + "\n"


def render_html(runs: list[dict], profile: str) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>labkit report — {html.escape(profile)}"
            f"</title><style>{style}</style></head><body><h1>labkit report — profile {html.escape(profile)}</h1>"
            "<p>Every number below was measured by the notebook's own run; the paper's number is for comparison "
            "only (our zoos are miniature analogues unless the profile is <code>full</code>).</p>"
            + table(["lab", "metric", "ours", "paper", "better", "note"], list(_rows(runs)))
            + "<h2>Runs</h2>"
            + table(["notebook", "profile", "device", "seconds", "exercises passed"], _runs_table(runs))
            + "</body></html>\n")


def write_report(runs_root: Path, profile: str) -> Path:
    """Write ``runs/<profile>/report.md`` and ``report.html``; return the HTML path."""
    runs_dir = Path(runs_root) / profile
    runs = load_runs(runs_dir)
    if not runs:
        raise ReportError(f"no metrics under {runs_dir}; run the notebooks first: labkit run --profile {profile}")
    (runs_dir / "report.md").write_text(render_markdown(runs, profile))
    out = runs_dir / "report.html"
    out.write_text(render_html(runs, profile))
    return out
