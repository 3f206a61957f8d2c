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
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.course import LABS, lab_of_stem
from labkit.safe_io import printable, read_json, write_atomic, write_json_atomic

__all__ = [
    "ReportError",
    "load_runs",
    "metrics",
    "metrics_file",
    "record",
    "record_exercise",
    "render_html",
    "render_markdown",
    "start",
    "write_report",
]

METRICS_ENV = "LABKIT_METRICS"
METRICS_LIMIT = 16 << 20  # a metrics.json larger than 16 MiB is not one


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
    exercise_details: dict[str, str] = field(default_factory=dict)  # id → the failing case and diagnosis

    def as_json(self) -> dict:
        return {
            "notebook": LABS[self.lab].stem if self.lab in LABS else None,
            "lab": self.lab,
            "profile": self.profile,
            "device": self.device,
            "seconds": round(time.perf_counter() - self.started, 2),
            "metrics": self.metrics,
            "exercises": self.exercises,
            "exercise_details": self.exercise_details,
        }


_RUN = _Run()


def metrics_file() -> Path | None:
    """Where ``record`` writes: ``$LABKIT_METRICS`` (``labkit run`` sets it), or None (kept in memory only)."""
    target = os.environ.get(METRICS_ENV)
    return Path(target) if target else None


def start(cfg) -> None:
    """Begin a new run for ``cfg.lab`` (``labkit.setup`` calls this unless ``record=False``): forget earlier
    metrics, remember lab, profile and device, and write the empty run to ``metrics_file()`` if there is one."""
    global _RUN
    _RUN = _Run(lab=cfg.lab, profile=cfg.profile, device=str(cfg.device))
    _flush()


def _flush() -> None:
    target = metrics_file()
    if target is not None:
        write_json_atomic(target, _RUN.as_json())


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


def record_exercise(exercise_id: str, status: str, detail: str = "") -> None:
    """Remember how an exercise went: 'passed', 'failed' or 'not attempted', and for a failure which case failed
    and why (written by ``exercises.check``; ``labkit grade`` reads both)."""
    _RUN.exercises[exercise_id] = status
    if detail:
        _RUN.exercise_details[exercise_id] = detail
    else:
        _RUN.exercise_details.pop(exercise_id, None)
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


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _metric_problem(key, m) -> str | None:
    """What is wrong with one entry of a metrics file's ``metrics`` (None if nothing)."""
    if not isinstance(m, dict):
        return f"metric {key!r} is a {type(m).__name__}, not an object such as {{\"value\": 0.97, \"paper\": null}}"
    for field_, ok in (("value", _is_number(m.get("value"))),
                       ("paper", m.get("paper") is None or _is_number(m.get("paper"))),
                       ("higher_is_better", m.get("higher_is_better") in (None, True, False)),
                       ("note", isinstance(m.get("note", ""), str))):
        if not ok:
            want = {"value": "a finite number", "paper": "a finite number or null",
                    "higher_is_better": "true, false or null", "note": "a string"}[field_]
            return f"metric {key!r}: {field_} must be {want}, got {m.get(field_)!r}"
    return None


def _check_run(data, path: Path) -> dict:
    """``data`` if it has the shape ``labkit.report.record`` writes; else a ``ReportError`` naming ``path``."""
    where = printable(path)
    fix = "re-run that notebook with `labkit run` (or delete the file)"
    if not isinstance(data, dict):
        raise ReportError(f"{where} holds a JSON {type(data).__name__}, not the object labkit writes "
                          f"({{\"notebook\": …, \"metrics\": {{…}}}}); {fix}")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ReportError(f"{where}: 'metrics' is a {type(metrics).__name__}; it must map each metric name to an "
                          f"object such as {{\"value\": 0.97, \"paper\": null}}; {fix}")
    problem = next((p for p in (_metric_problem(k, m) for k, m in metrics.items()) if p), None)
    if problem:
        raise ReportError(f"{where}: {printable(problem)}; {fix}")
    for key, ok in (("notebook", isinstance(data.get("notebook", ""), str)),
                    ("exercises", isinstance(data.get("exercises", {}), dict)),
                    ("exercise_details", isinstance(data.get("exercise_details", {}), dict)),
                    ("seconds", data.get("seconds") is None or _is_number(data.get("seconds")))):
        if not ok:
            raise ReportError(f"{where}: '{key}' is {printable(repr(data[key]))[:60]}, not what labkit writes; {fix}")
    return data


def load_runs(runs_dir: Path) -> list[dict]:
    """Every ``<stem>/metrics.json`` under ``runs_dir`` (one profile), in course order.

    A file that is not JSON, or not the object ``record`` writes (``metrics`` mapping names to objects with a
    finite ``value``), is a ``ReportError`` naming it."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/metrics.json")):
        try:
            data = read_json(path, METRICS_LIMIT, "metrics.json")
        except (OSError, ValueError) as e:  # unreadable, not a regular file, too large, not JSON, not UTF-8
            raise ReportError(f"cannot read {printable(path)}: {printable(e)}; re-run that notebook with "
                              "`labkit run`") from None
        data = _check_run(data, path)
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
        seconds = run.get("seconds")
        out.append((run["notebook"], str(run.get("profile")), str(run.get("device")),
                    f"{seconds:.1f}" if seconds is not None else "–", f"{passed}/{len(ex)}" if ex else "–"))
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
    write_atomic(runs_dir / "report.md", render_markdown(runs, profile))
    out = runs_dir / "report.html"
    write_atomic(out, render_html(runs, profile))
    return out
