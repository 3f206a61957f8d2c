import pytest
from conftest import make_notebook

from labkit.nbtools import (
    NotebookError,
    exercise_ids,
    parameter_values,
    read_notebook,
    student_copy,
    student_source,
    write_copies,
)

SOLUTION_CELL = '''def f(x):
    """Double x."""
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION

f = labkit.exercises.check("99.double", f)'''


def test_student_source_replaces_block_at_its_indentation():
    out = student_source(SOLUTION_CELL, "99.double", "multiply by two")
    assert "2 * x" not in out and "BEGIN SOLUTION" not in out
    assert "    raise NotImplementedError('Exercise 99.double: multiply by two')" in out
    assert out.startswith('def f(x):\n    """Double x."""') and out.endswith('check("99.double", f)')
    compile(out, "<student>", "exec")


@pytest.mark.parametrize("src, match", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
])
def test_broken_markers_are_errors(src, match):
    with pytest.raises(NotebookError, match=match):
        student_source(src, "x")


def test_student_and_instructor_copies(tmp_path):
    src = make_notebook(tmp_path / "nb" / "07_demo.ipynb", "import labkit", SOLUTION_CELL, "print(f(2))")
    nb = read_notebook(src)
    assert exercise_ids(nb) == ["99.double"]
    student = student_copy(nb, {"99.double": "hint"})
    assert "NotImplementedError('Exercise 99.double: hint')" in student.cells[2].source
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
