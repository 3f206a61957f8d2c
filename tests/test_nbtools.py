import pytest
from conftest import make_notebook

from labkit.nbtools import (
    NotebookError,
    exercise_ids,
    instructor_source,
    parameter_values,
    read_notebook,
    solution_lines,
    student_copy,
    student_source,
    write_copies,
)
from labkit.runner import default_notebooks

SOLUTION_CELL = '''def f(x):
    """Double x."""
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION

f = labkit.exercises.check("99.double", f)'''


SCAFFOLD_CELL = '''def total(rows):
    """Sum of each row's largest value."""
    out = 0.0
    for row in rows:
        ### BEGIN SOLUTION
        out += max(row)
        ### END SOLUTION
        ### BEGIN SCAFFOLD
        # out += ...  # the largest value of row
        ### END SCAFFOLD
    return out

total = labkit.exercises.check("99.total", total)'''


def test_student_source_replaces_block_at_its_indentation():
    out = student_source(SOLUTION_CELL, "99.double")
    assert "2 * x" not in out and "BEGIN SOLUTION" not in out
    assert "    raise NotImplementedError('Exercise 99.double: write your code here" in out
    assert 'labkit.exercises.hint("99.double") prints a hint' in out
    assert out.startswith('def f(x):\n    """Double x."""') and out.endswith('check("99.double", f)')
    compile(out, "<student>", "exec")


def test_scaffold_becomes_the_students_skeleton_and_leaves_the_instructor_copy():
    student = student_source(SCAFFOLD_CELL, "99.total")
    assert "max(row)" not in student and "SCAFFOLD" not in student
    assert "        raise NotImplementedError(" in student
    assert "        out += ...  # the largest value of row" in student.splitlines()
    assert "    for row in rows:" in student and "    return out" in student
    compile(student, "<student>", "exec")
    instructor = instructor_source(SCAFFOLD_CELL, "99.total")
    assert "        out += max(row)" in instructor and "..." not in instructor and "SCAFFOLD" not in instructor
    assert solution_lines(SCAFFOLD_CELL, "99.total") == ["out += max(row)"]


@pytest.mark.parametrize("src, match", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside a solution region"),
    ("### BEGIN SCAFFOLD\n# x = ...\n", "never closed"),
    ("### BEGIN SOLUTION\nx = 1\n### END SCAFFOLD\n", "without"),
])
def test_broken_markers_are_errors(src, match):
    with pytest.raises(NotebookError, match=match):
        student_source(src, "x")


def test_student_and_instructor_copies(tmp_path):
    src = make_notebook(tmp_path / "nb" / "07_demo.ipynb", "import labkit", SOLUTION_CELL, "print(f(2))")
    nb = read_notebook(src)
    assert exercise_ids(nb) == ["99.double"]
    student = student_copy(nb)
    assert "NotImplementedError('Exercise 99.double: write your code here" in student.cells[2].source
    assert nb.cells[2].source == SOLUTION_CELL  # the source is untouched
    written = write_copies([src], tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "instructor/07_demo.ipynb", "student/07_demo.ipynb"]


def test_solution_cell_needs_exactly_one_check_call(tmp_path):
    src = make_notebook(tmp_path / "x.ipynb", "def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")
    with pytest.raises(NotebookError, match="0 labkit.exercises.check"):
        exercise_ids(read_notebook(src))


def test_parameters_cell_rules(tmp_path):
    ok = make_notebook(tmp_path / "ok.ipynb", params='profile = "smoke"\nseed: int = 3  # comment')
    assert parameter_values(read_notebook(ok)) == {"profile": "smoke", "seed": 3}
    none = make_notebook(tmp_path / "none.ipynb", "x = 1", params=None)
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'"):
        parameter_values(read_notebook(none))
    derived = make_notebook(tmp_path / "derived.ipynb", params='profile = "smoke"\nn = len(profile)')
    with pytest.raises(NotebookError, match="not a literal"):
        parameter_values(read_notebook(derived))


def test_unreadable_notebook(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(NotebookError, match="not a readable notebook"):
        read_notebook(bad)
    with pytest.raises(NotebookError, match="notebook not found"):
        read_notebook(tmp_path / "missing.ipynb")


@pytest.mark.parametrize("path", default_notebooks(), ids=lambda p: p.stem)
def test_no_student_copy_contains_a_line_of_any_solution(path):
    """Every code line of every solution region is absent from the student copy (stubs and scaffolds only)."""
    nb = read_notebook(path)
    student = "\n".join(c.source for c in student_copy(nb).cells)
    student_lines = {line.strip() for line in student.splitlines()}
    leaked = [line for i, c in enumerate(nb.cells) if c.cell_type == "code" and "### BEGIN SOLUTION" in c.source
              for line in solution_lines(c.source, f"cell {i}")
              if line in student_lines]
    assert not leaked, f"{path.name}: the student copy contains solution lines {leaked[:3]}"
