"""The exercise conventions of issue 15 in every lab that has its ladder: the ladder table at the top, a header line
per exercise, 4-6 exercises with one real build, scaffolds in the student copy, Think! prompts answered in the
instructor notes, and downstream cells that say whose function runs."""

import re
from pathlib import Path

import pytest

from labkit.exercise_bank import EXERCISES, header_line, ladder_table
from labkit.nbtools import exercise_ids, read_notebook, student_copy
from labkit.runner import default_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.stem[:2]: p for p in default_notebooks()}
LADDER_LABS = sorted(NOTEBOOKS)  # every lab
THINK = re.compile(r"\*\*Think! (\d\d)\.(\d)\*\*")


def _cells(lab):
    return read_notebook(NOTEBOOKS[lab]).cells


@pytest.mark.parametrize("lab", LADDER_LABS)
def test_ladder_table_and_header_lines(lab):
    cells = _cells(lab)
    ids = exercise_ids(read_notebook(NOTEBOOKS[lab]))
    assert 4 <= len(ids) <= 6, f"lab {lab} has {len(ids)} exercises; a ladder has 4-6"
    assert sorted(ids) == sorted(e.id for e in EXERCISES.values() if e.lab == lab)
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert any(ladder_table(lab) in m for m in markdown), f"lab {lab}: the ladder table (ladder_table) is missing"
    for ex_id in ids:
        code = next(i for i, c in enumerate(cells) if c.cell_type == "code" and f'check("{ex_id}"' in c.source)
        before = [c.source for c in cells[:code] if c.cell_type == "markdown"]
        assert before and any(header_line(ex_id) in m for m in before[-3:]), f"{ex_id}: no header line above it"


@pytest.mark.parametrize("lab", LADDER_LABS)
def test_one_real_build_and_scaffolds(lab):
    nb = read_notebook(NOTEBOOKS[lab])
    student = student_copy(nb)
    builds = 0
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and "### BEGIN SOLUTION" in c.source:
            body = c.source.split("### BEGIN SOLUTION")[1:]
            lines = sum(len([x for x in b.split("### END SOLUTION")[0].splitlines() if x.strip()]) for b in body)
            builds += 15 <= len(c.source.splitlines()) and lines >= 5
            assert "..." in student.cells[i].source, f"lab {lab} cell {i}: the student copy has no scaffold"
    assert builds >= 1, f"lab {lab}: no real build (a 15-40 line exercise cell)"


@pytest.mark.parametrize("lab", LADDER_LABS)
def test_think_prompts_are_answered_in_the_instructor_notes(lab):
    prompts = sorted({m.groups() for c in _cells(lab) if c.cell_type == "markdown" for m in THINK.finditer(c.source)})
    assert 1 <= len(prompts) <= 3 and all(p[0] == lab for p in prompts), f"lab {lab}: Think! prompts {prompts}"
    notes = ROOT / "docs" / "instructor" / f"{NOTEBOOKS[lab].stem}.md"
    assert notes.is_file(), f"{notes} is missing"
    text = notes.read_text()
    for lab_no, k in prompts:
        assert f"**Think! {lab_no}.{k}**" in text, f"{notes.name} does not answer Think! {lab_no}.{k}"


@pytest.mark.parametrize("lab", LADDER_LABS)
def test_cells_after_an_exercise_say_whose_function_runs(lab):
    """The first later cell that calls an exercise's function prints ``labkit.exercises.which(id, name)``."""
    cells = _cells(lab)
    for ex_id in exercise_ids(read_notebook(NOTEBOOKS[lab])):
        code = next(i for i, c in enumerate(cells) if c.cell_type == "code" and f'check("{ex_id}"' in c.source)
        name = re.search(rf'(\w+) = labkit\.exercises\.check\("{re.escape(ex_id)}"', cells[code].source)[1]
        users = [c.source for c in cells[code + 1:] if c.cell_type == "code" and re.search(rf"\b{name}\(", c.source)]
        if users:
            assert f'which("{ex_id}"' in users[0], f"{ex_id}: the first cell that calls {name} does not print which"
