"""`labkit grade`: submissions found and attributed, rows for every exercise of the lab, CSV and markdown, and
notebooks that fail (raise, crash the kernel, hang past --timeout) graded as 'error' without ending the run.

The executed submissions are tiny lab-00 notebooks written here (one exercise check each), not the course
notebooks, so the kernels start, check and stop in seconds."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import pytest
from conftest import make_notebook

from labkit import cli
from labkit.exercise_bank import EXERCISES
from labkit.grading import (
    GradeRow,
    Submission,
    exercise_rows,
    find_submissions,
    grade_paths,
    grade_submission,
    render_csv,
    render_markdown,
)

LAB00 = [ex.id for ex in EXERCISES.values() if ex.lab == "00"]
DIAGNOSIS = EXERCISES["00.energy"].mistakes[0][0]  # "summed the singular values themselves; ..."

SETUP = "import labkit\nimport torch\ncfg = labkit.setup(profile, lab=\"00\", quiet=True)"
CORRECT = """def energy_fraction(W, k):
    s2 = torch.linalg.svdvals(W) ** 2
    return s2[:k].sum() / s2.sum()

energy_fraction = labkit.exercises.check("00.energy", energy_fraction)"""
WRONG = """def energy_fraction(W, k):
    s = torch.linalg.svdvals(W)
    return s[:k].sum() / s.sum()

energy_fraction = labkit.exercises.check("00.energy", energy_fraction)"""


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _by(rows: list[dict], student: str) -> dict[str, dict]:
    return {r["exercise"]: r for r in rows if r["student"] == student}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ no kernel needed


def test_submissions_are_found_recursively_and_attributed_to_a_folder_or_a_file_name(tmp_path):
    for rel in ["alice/00_start_here.ipynb", "alice/late/01_model_trees.ipynb", "bob.ipynb",
                "alice/.ipynb_checkpoints/00_start_here-checkpoint.ipynb", ".hidden/x.ipynb", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = find_submissions(tmp_path)
    assert [(s.name, s.student) for s in found] == [("alice/00_start_here.ipynb", "alice"),
                                                    ("alice/late/01_model_trees.ipynb", "alice"),
                                                    ("bob.ipynb", "bob")]


def test_every_exercise_of_the_lab_gets_a_row_and_unreached_ones_are_not_run_or_error():
    sub = Submission(Path("x/alice/00_start_here.ipynb"), "alice", "alice/00_start_here.ipynb")
    metrics = {"lab": "00", "exercises": {"00.energy": "failed"},
               "exercise_details": {"00.energy": "case 2/6 (wide) differs; diagnosis: squares"}}
    finished = exercise_rows(sub, metrics, None)
    assert [r.exercise for r in finished] == LAB00
    assert finished[0] == GradeRow("alice", "alice/00_start_here.ipynb", "00", "00.energy", "fail",
                                   "case 2/6 (wide) differs; diagnosis: squares")
    assert all(r.status == "not run" for r in finished[1:])
    crashed = exercise_rows(sub, {"lab": "00", "exercises": {"00.energy": "passed"}}, "boom in cell 3")
    assert crashed[0].status == "pass"  # checked before the crash: keeps its grade
    assert all((r.status, r.detail) == ("error", "boom in cell 3") for r in crashed[1:])


def test_the_lab_comes_from_the_name_then_setup_then_the_checks():
    def lab(name: str, metrics: dict, source_ids=()) -> set[str]:
        sub = Submission(Path(name), "s", name)
        return {r.lab for r in exercise_rows(sub, metrics, None, source_ids)}

    assert lab("alice_00_start_here (2).ipynb", {"lab": "04"}) == {"00"}
    assert lab("mine.ipynb", {"lab": "04"}) == {"04"}
    assert lab("mine.ipynb", {"exercises": {"01.x": "passed", "04.y": "passed", "04.z": "failed"}}) == {"04"}
    assert lab("mine.ipynb", {}, ["05.anything"]) == {"05"}
    unknown = exercise_rows(Submission(Path("mine.ipynb"), "s", "mine.ipynb"), {}, None)
    assert [(r.exercise, r.status) for r in unknown] == [("", "error")]
    assert "lab is unknown" in unknown[0].detail


def test_a_forged_or_odd_status_is_an_error_not_a_grade():
    sub = Submission(Path("00_start_here.ipynb"), "s", "00_start_here.ipynb")
    rows = exercise_rows(sub, {"exercises": {"00.energy": "excellent", 3: "passed"}, "exercise_details": []}, None)
    assert rows[0].status == "error" and "'excellent'" in rows[0].detail


def test_csv_cells_never_start_a_formula_and_markdown_cells_never_break_the_table():
    rows = [GradeRow("=HYPERLINK(1)", "a|b.ipynb", "00", "00.energy", "fail", "raised ValueError: <img> | x")]
    parsed = next(csv.DictReader(io.StringIO(render_csv(rows))))
    assert parsed["student"] == "'=HYPERLINK(1)" and parsed["detail"] == "raised ValueError: <img> | x"
    table_row = render_markdown(rows).splitlines()[-1]
    assert table_row == r"| =HYPERLINK(1) | a\|b.ipynb | 00.energy | fail | raised ValueError: &lt;img> \| x |"


def test_a_submission_that_is_not_a_regular_file_gets_error_rows_without_running(tmp_path):
    fifo = tmp_path / "eve" / "00_start_here.ipynb"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # reading it would block forever
    rows = grade_submission(find_submissions(tmp_path)[0], "smoke", timeout=5)
    assert [r.exercise for r in rows] == LAB00
    assert all(r.status == "error" and "FIFO" in r.detail for r in rows)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "missing" in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["grade", str(tmp_path / "empty")]) == 2
    assert "no notebooks" in capsys.readouterr().err
    assert cli.main(["grade", str(tmp_path), "--profile", "huge"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["grade", str(tmp_path), "--timeout", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    make_notebook(tmp_path / "sub" / "a.ipynb", "x = 1")
    assert cli.main(["grade", str(tmp_path / "sub"), "--out", str(tmp_path / "grades.md")]) == 2
    assert "ends in .md" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a folder"):
        grade_paths(tmp_path)


def test_help_says_it_runs_the_students_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["grade", "--help"])
    assert "EXECUTES THE SUBMISSIONS' CODE" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------- executed notebooks


@pytest.mark.notebook
def test_grade_a_crashing_a_correct_a_wrong_and_a_raising_submission(tmp_path, kit_home, monkeypatch, capsys):
    subs = tmp_path / "submissions"
    make_notebook(subs / "ada" / "00_start_here.ipynb", "import os\nos._exit(1)")  # sorted first: the run goes on
    make_notebook(subs / "bob" / "00_start_here.ipynb", SETUP, CORRECT)
    make_notebook(subs / "cyd" / "00_start_here.ipynb", SETUP, WRONG)
    # no lab in the name and no labkit.setup: the lab comes from the check in its source, never reached; no
    # parameters cell either (an editor dropped the tag): grade adds one to its copy
    make_notebook(subs / "dan.ipynb", "profile = 'smoke'", "raise RuntimeError('boom at top level')",
                  SETUP + "\n" + CORRECT, params=None)
    before = _snapshot(subs)
    monkeypatch.chdir(tmp_path)

    assert cli.main(["grade", str(subs)]) == 0
    out = capsys.readouterr().out
    assert _snapshot(subs) == before  # submissions untouched, nothing written next to them

    rows = _csv_rows(tmp_path / "grades.csv")
    assert {r["student"] for r in rows} == {"ada", "bob", "cyd", "dan"}
    for student in ("ada", "bob", "cyd", "dan"):
        assert list(_by(rows, student)) == LAB00, student  # every registered 00.* exercise, in order
    assert all(r["lab"] == "00" for r in rows)
    ada, bob, cyd, dan = (_by(rows, s) for s in ("ada", "bob", "cyd", "dan"))
    assert {r["status"] for r in [*ada.values(), *dan.values()]} == {"error"}
    assert "the kernel died" in ada["00.energy"]["detail"] and "os._exit" in ada["00.energy"]["detail"]
    assert "\n" not in ada["00.energy"]["detail"] and str(tmp_path) not in ada["00.energy"]["detail"]
    assert "RuntimeError: boom at top level" in dan["00.energy"]["detail"]
    assert (bob["00.energy"]["status"], bob["00.energy"]["detail"]) == ("pass", "")
    assert cyd["00.energy"]["status"] == "fail"
    assert cyd["00.energy"]["detail"].startswith("case ") and f"differs; diagnosis: {DIAGNOSIS}" in \
        cyd["00.energy"]["detail"]
    assert all(r["status"] == "not run" for r in [*bob.values(), *cyd.values()] if r["exercise"] != "00.energy")

    md = (tmp_path / "grades.md").read_text()
    assert out == md
    assert "| student | notebook | exercise | status | detail |" in md
    assert "| bob | bob/00_start_here.ipynb | 00.energy | pass |  |" in md
    assert f"| cyd | cyd/00_start_here.ipynb | 00.energy | fail | {cyd['00.energy']['detail']} |" in md
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + 4 * len(LAB00)  # header, rule, rows
    print(md)


@pytest.mark.notebook
def test_a_hanging_submission_is_stopped_at_the_timeout_and_its_kernel_killed(tmp_path, kit_home, capsys):
    subs = tmp_path / "submissions"
    pid_file = tmp_path / "kernel.pid"
    make_notebook(subs / "ann" / "00_start_here.ipynb",
                  f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))", "while True:\n    pass")
    out_csv = tmp_path / "out" / "g.csv"

    t0 = time.perf_counter()
    assert cli.main(["grade", str(subs), "--timeout", "15", "--out", str(out_csv)]) == 0
    assert time.perf_counter() - t0 < 40
    capsys.readouterr()
    ann = _by(_csv_rows(out_csv), "ann")
    assert list(ann) == LAB00
    assert {r["status"] for r in ann.values()} == {"error"}
    assert "ran past the 15 s limit per notebook (--timeout)" in ann["00.energy"]["detail"]
    assert "while True:" in ann["00.energy"]["detail"]  # the cell that was running
    assert (tmp_path / "out" / "g.md").is_file()
    pid = int(pid_file.read_text())
    for _ in range(20):  # the hung kernel was killed, not left spinning
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the hung kernel (pid {pid}) is still running")
