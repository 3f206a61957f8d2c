"""Grade a folder of submitted notebooks (``labkit grade``): one row per student × exercise.

Layout of the submissions folder (searched recursively; hidden folders and ``.ipynb_checkpoints`` are skipped)::

    submissions/
        alice/00_start_here.ipynb        student "alice" (the folder directly under submissions/)
        alice/extra/01_model_trees.ipynb student "alice" again (any depth below her folder)
        bob.ipynb                        student "bob" (a notebook directly in submissions/: its file name)

Each notebook is copied into a fresh temporary folder and executed there with papermill through the kit's runner
(``labkit.runner.run_notebook``; its kernel works in that folder), so the submitted file is never written to and
nothing lands next to it. The exercise results come from the ``metrics.json`` the run leaves
(``labkit.exercises.check`` records ``"exercises"`` and ``"exercise_details"`` there). The rows list every exercise
of the notebook's lab (``labkit.exercise_bank.EXERCISES``, lab = the id's prefix) and any other exercise it
recorded. The lab comes from the file name (``00_start_here.ipynb``, also ``alice_00_start_here (2).ipynb``), else
from ``labkit.setup(profile, lab=...)`` in the run, else from the exercises it recorded or checks in its source.

Statuses: ``pass``, ``fail`` (detail: the failing case and, for a typical mistake, its diagnosis),
``not attempted`` (the student copy's stub is still there), ``not run`` (the notebook finished but never checked
that exercise) and ``error`` (the run crashed, raised or ran past ``timeout`` before checking that exercise;
detail: the error in one line). An exercise checked before a crash keeps the status it got.

The submissions' code runs as the user who grades, with that user's files and network: grade only in an
environment where running the students' code is acceptable. A submission can also write its own metrics file,
so a ``pass`` is the checker's verdict on code that ran, not a proof against a student who forges it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from labkit.course import LABS, lab_of_stem
from labkit.nbtools import NotebookError, parameters_cell
from labkit.report import METRICS_LIMIT
from labkit.safe_io import printable, read_bytes, read_json, write_atomic

__all__ = [
    "STATUSES",
    "GradeRow",
    "Submission",
    "exercise_rows",
    "find_submissions",
    "grade",
    "grade_paths",
    "grade_submission",
    "render_csv",
    "render_markdown",
    "write_grades",
]

DEFAULT_TIMEOUT = 600.0  # seconds one submission may run
NOTEBOOK_LIMIT = 256 << 20  # a submitted .ipynb larger than 256 MiB is not a lab notebook
STATUSES = ("pass", "fail", "not attempted", "not run", "error")
_RECORDED = {"passed": "pass", "failed": "fail", "not attempted": "not attempted"}  # metrics.json → grade
_CHECK_CALL = re.compile(r"""exercises\.check\(\s*["']([\w.\-]+)["']""")
_SKIPPED_DIRS = {".ipynb_checkpoints", "__pycache__"}


@dataclass(frozen=True)
class Submission:
    """One submitted notebook: its path, the student it belongs to and its name relative to the folder."""

    path: Path
    student: str
    name: str  # path relative to the submissions folder, with '/' separators


@dataclass(frozen=True)
class GradeRow:
    """One student × exercise result (the CSV's columns, in order)."""

    student: str
    notebook: str
    lab: str
    exercise: str
    status: str  # one of STATUSES
    detail: str


COLUMNS = tuple(f.name for f in fields(GradeRow))


def find_submissions(folder: str | os.PathLike) -> list[Submission]:
    """Every ``*.ipynb`` under ``folder`` (recursively, symlinked folders not followed, hidden folders and
    ``.ipynb_checkpoints`` skipped), sorted by relative path. ``FileNotFoundError`` for a missing folder,
    ``ValueError`` for a file or a folder without notebooks."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"the submissions folder {printable(root)} does not exist")
    if not root.is_dir():
        raise ValueError(f"{printable(root)} is a file; give the folder that holds the submitted notebooks")
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        found += [Path(here) / f for f in files if f.endswith(".ipynb") and not f.startswith(".")]
    if not found:
        raise ValueError(f"no notebooks (*.ipynb) in {printable(root)} or its sub-folders")
    subs = []
    for path in found:
        rel = path.relative_to(root)
        student = rel.parts[0] if len(rel.parts) > 1 else path.stem
        subs.append(Submission(path, student, rel.as_posix()))
    return sorted(subs, key=lambda s: s.name)


def _lab_from_name(stem: str) -> str | None:
    """The lab whose notebook stem is ``stem``, or is contained in it (``alice_00_start_here (2)``)."""
    lab = lab_of_stem(stem)
    if lab is not None:
        return lab.number
    hits = [lab for lab in LABS.values() if lab.stem.lower() in stem.lower()]
    return max(hits, key=lambda lab: len(lab.stem)).number if hits else None


def _lab_of_ids(ids: list[str]) -> str | None:
    """The most common lab among exercise ids (first seen on a tie), if any is a lab of the course."""
    labs = Counter(i.split(".", 1)[0] for i in ids if i.split(".", 1)[0] in LABS)
    return labs.most_common(1)[0][0] if labs else None


def _clean_map(value: object) -> dict[str, str]:
    """The str → str entries of a mapping read from metrics.json (which the submission's code can write)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def exercise_rows(sub: Submission, metrics: dict, error: str | None,
                  source_ids: Sequence[str] = ()) -> list[GradeRow]:
    """The rows of one graded notebook from what its run recorded (``metrics``: the metrics.json object),
    its one-line ``error`` (None if the run finished) and the exercise ids its source checks."""
    from labkit.exercise_bank import EXERCISES

    recorded = _clean_map(metrics.get("exercises"))
    details = _clean_map(metrics.get("exercise_details"))
    stem = Path(sub.name).stem
    setup_lab = metrics.get("lab") if metrics.get("lab") in LABS else None
    lab = _lab_from_name(stem) or setup_lab or _lab_of_ids(list(recorded)) or _lab_of_ids(list(source_ids))
    ids = [ex.id for ex in EXERCISES.values() if ex.lab == lab] if lab else []
    ids += [i for i in dict.fromkeys([*recorded, *source_ids]) if i not in ids]
    error = printable(error) if error else None

    def row(exercise: str, status: str, detail: str) -> GradeRow:
        return GradeRow(printable(sub.student), printable(sub.name), lab or "", printable(exercise), status,
                        printable(detail))

    if not ids:
        return [row("", "error", error or "no exercise to grade: the notebook checked none and its lab is unknown "
                                          "(name it after its lab, e.g. 00_start_here.ipynb, or call "
                                          "labkit.setup(profile, lab=\"00\"))")]
    rows = []
    for exercise in ids:
        if exercise in recorded:
            status = _RECORDED.get(recorded[exercise])
            if status is None:
                rows.append(row(exercise, "error", f"the notebook recorded the status {recorded[exercise]!r}, not "
                                                   "passed, failed or not attempted"))
            else:
                rows.append(row(exercise, status, details.get(exercise, "") if status == "fail" else ""))
        elif error:
            rows.append(row(exercise, "error", error))
        else:
            rows.append(row(exercise, "not run", "the notebook finished without checking it"))
    return rows


class _Deadline:
    """Stop one notebook's run after ``seconds``: from then on, kill every process this process started since
    the deadline was armed (the run's kernel and anything the kernel started), until the run returns. The runner
    then reports a dead kernel, which ``killed`` lets the caller describe as a timeout."""

    def __init__(self, seconds: float) -> None:
        import psutil

        self.seconds = seconds
        self.killed = False  # whether the deadline passed and stopped a process of the run
        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="labkit-grade-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        if self._stop.wait(self.seconds):
            return
        while not self._stop.is_set():
            self._kill_new_children()
            self._stop.wait(0.5)

    def _kill_new_children(self) -> None:
        import psutil

        for child in self._me.children():
            if child.pid in self._before:
                continue
            try:
                for p in [*child.children(recursive=True), child]:
                    p.kill()
                    self.killed = True
            except psutil.Error:  # gone already
                pass


def _source_ids(data: bytes) -> list[str]:
    """The exercise ids the notebook's code cells check (``labkit.exercises.check("00.energy", ...)``)."""
    try:
        cells = json.loads(data).get("cells", [])
        sources = ["".join(c["source"]) if isinstance(c["source"], list) else str(c["source"])
                   for c in cells if isinstance(c, dict) and c.get("cell_type") == "code" and "source" in c]
    except (ValueError, AttributeError, TypeError, KeyError):
        return []
    return list(dict.fromkeys(i for s in sources for i in _CHECK_CALL.findall(s)))


def _with_parameters_cell(data: bytes, profile: str) -> bytes:
    """The notebook with a tagged ``parameters`` cell setting ``profile`` first if it has none (an editor that
    drops cell tags would otherwise make the runner refuse it); unchanged otherwise, or if it is not a notebook."""
    import nbformat

    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        parameters_cell(nb)
    except NotebookError:  # no parameters cell (or several: the runner says so)
        if any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
            return data
        cell = nbformat.v4.new_code_cell(f"profile = {profile!r}  # added by labkit grade: the submission had no "
                                         "cell tagged 'parameters'")
        cell.metadata["tags"] = ["parameters"]
        nb.cells.insert(0, cell)
        return nbformat.writes(nb).encode("utf-8")
    except Exception:  # not a notebook: the runner reports it
        return data
    return data


def grade_submission(sub: Submission, profile: str, timeout: float = DEFAULT_TIMEOUT) -> list[GradeRow]:
    """Run one submission in its own temporary folder (at most ``timeout`` seconds, kernel start included) and
    return its rows; a notebook that cannot be read, raises, crashes its kernel or hangs gives ``error`` rows."""
    from labkit.runner import _running_cell, run_notebook

    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        work = Path(tmp)
        try:
            data = read_bytes(sub.path, NOTEBOOK_LIMIT, "notebook")
        except (OSError, ValueError) as e:
            return exercise_rows(sub, {}, f"{Path(sub.name).stem} could not be read: {e}")
        copy = work / "submission" / sub.path.name
        copy.parent.mkdir()
        copy.write_bytes(_with_parameters_cell(data, profile))
        metrics_path = work / "runs" / profile / copy.stem / "metrics.json"
        try:
            with _Deadline(timeout) as deadline:
                run = run_notebook(copy, profile, runs_root=work / "runs", cwd=work)
            error = run.error
            if deadline.killed:
                error = (f"{copy.stem} failed {_running_cell(run.output)}: ran past the {timeout:g} s limit per "
                         "notebook (--timeout) and was stopped")
        except Exception as e:  # a notebook the runner refuses (no parameters cell, not JSON): its rows, go on
            error = f"{copy.stem} was not run: {type(e).__name__}: {e}"
        try:
            metrics = read_json(metrics_path, METRICS_LIMIT, "metrics.json") if metrics_path.is_file() else {}
        except (OSError, ValueError):
            metrics = {}
        if error:  # paths into the temporary folder mean nothing once it is gone
            error = re.sub(r"(;|,)? ?(its output is in|\(kernel output:) \S+\)?", "", error)
            error = error.replace(str(work), "<temporary run folder>")
        return exercise_rows(sub, metrics if isinstance(metrics, dict) else {}, error, _source_ids(data))


def grade(folder: str | os.PathLike, profile: str | None = "smoke", timeout: float = DEFAULT_TIMEOUT,
          progress: Callable[[str], None] | None = None) -> list[GradeRow]:
    """Grade every submission under ``folder`` (see the module doc); ``progress`` gets one line per notebook.
    ``profile``: $LABKIT_PROFILE, when set, wins (``labkit.session.resolve_profile``)."""
    from labkit.session import resolve_profile

    if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"the per-notebook timeout must be a positive number of seconds, got {timeout}")
    profile = resolve_profile(profile)
    subs = find_submissions(folder)
    rows: list[GradeRow] = []
    for k, sub in enumerate(subs, 1):
        t0 = time.perf_counter()
        if progress:
            progress(f"{k}/{len(subs)} {printable(sub.name)} (student {printable(sub.student)}, profile {profile}) …")
        found = grade_submission(sub, profile, timeout)
        if progress:
            tally = Counter(r.status for r in found)
            progress(f"{k}/{len(subs)} {printable(sub.name)}: " + ", ".join(f"{n} {s}" for s, n in tally.items()) +
                     f" ({time.perf_counter() - t0:.1f} s)")
        rows += found
    return rows


def _csv_cell(text: str) -> str:
    """Text a spreadsheet shows as text: a leading = + - @ (a formula to Excel/LibreOffice) gets a quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(rows: list[GradeRow]) -> str:
    """The rows as CSV with a header (student, notebook, lab, exercise, status, detail)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows([_csv_cell(v) for v in astuple(r)] for r in rows)
    return out.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def render_markdown(rows: list[GradeRow], profile: str | None = None) -> str:
    """A heading, a count per status and the table student | notebook | exercise | status | detail."""
    students = len({r.student for r in rows})
    notebooks = len({r.notebook for r in rows})
    tally = Counter(r.status for r in rows)
    counts = ", ".join(f"{tally[s]} {s}" for s in STATUSES if tally[s])
    lines = [f"# Grades: {students} student{'s' * (students != 1)}, {notebooks} notebook{'s' * (notebooks != 1)}"
             + (f" (profile {profile})" if profile else ""),
             "", counts or "no rows", "",
             "| student | notebook | exercise | status | detail |", "|---|---|---|---|---|"]
    lines += [f"| {_md_cell(r.student)} | {_md_cell(r.notebook)} | {_md_cell(r.exercise)} | {r.status} | "
              f"{_md_cell(r.detail)} |" for r in rows]
    return "\n".join(lines) + "\n"


def grade_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(csv, md)``: ``out`` and the markdown file next to it (same name, ``.md``); ``ValueError`` for an
    ``out`` that is a folder or ends in .md (the two files would be one)."""
    csv_path = Path(out)
    if csv_path.suffix.lower() == ".md":
        raise ValueError(f"--out {printable(out)} ends in .md; give the CSV file (e.g. grades.csv): the markdown "
                         "table is written next to it")
    if csv_path.is_dir():
        raise ValueError(f"--out {printable(out)} is a folder; give a file name such as grades.csv")
    return csv_path, csv_path.with_suffix(".md")


def write_grades(rows: list[GradeRow], out: str | os.PathLike, profile: str | None = None) -> tuple[Path, Path, str]:
    """Write the CSV at ``out`` and the markdown next to it (both atomically); returns both paths and the
    markdown text."""
    csv_path, md_path = grade_paths(out)
    markdown = render_markdown(rows, profile)
    write_atomic(csv_path, render_csv(rows))
    write_atomic(md_path, markdown)
    return csv_path, md_path, markdown
