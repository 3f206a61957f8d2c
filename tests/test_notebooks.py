"""Every notebook in notebooks/: committed clean, runs in the smoke profile as the instructor copy (papermill,
every exercise passes) and as the student copy (nbval-lax with LABKIT_PROFILE=smoke, every exercise 'not
attempted', and still no error to the end)."""

import json
import os
import subprocess
import sys

import pytest

from labkit.nbtools import exercise_ids, has_outputs, parameter_values, read_notebook, student_copy
from labkit.runner import default_notebooks, run_notebook

NOTEBOOKS = default_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def test_the_course_has_its_notebooks():
    assert "00_start_here" in IDS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_open_on_the_kits_kernel(path):
    """JupyterLab starts the kernel `make` installs ("Python (labkit)", the kit's interpreter), not any python3."""
    spec = read_notebook(path).metadata.get("kernelspec", {})
    assert (spec.get("name"), spec.get("display_name")) == ("labkit", "Python (labkit)"), f"{path.name}: {spec}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs_and_with_a_literal_parameters_cell(path):
    nb = read_notebook(path)
    assert not has_outputs(nb), f"{path.name} has outputs; clear them before committing"
    assert parameter_values(nb, path.name).get("profile") == "workshop"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "the parameters cell must be the first code cell"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_instructor_copy_runs_in_smoke(path, tmp_path):
    result = run_notebook(path, "smoke", runs_root=tmp_path)
    assert result.ok, result.error
    metrics = json.loads(result.metrics.read_text())
    assert metrics["metrics"], f"{path.name} recorded no metric"
    expected = exercise_ids(read_notebook(path))
    assert metrics["exercises"] == dict.fromkeys(expected, "passed")
    print(f"{path.stem}: {result.seconds:.1f} s in smoke")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_runs_to_the_end_through_the_reference_fallbacks(path, tmp_path):
    import nbformat

    nb = read_notebook(path)
    student = tmp_path / path.name
    nbformat.write(student_copy(nb), student)
    metrics = tmp_path / "metrics.json"
    env = {**os.environ, "LABKIT_PROFILE": "smoke", "LABKIT_METRICS": str(metrics)}
    res = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q",
                          "-p", "no:cacheprovider", "-o", "addopts=", str(student)],
                         cwd=path.parent, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]
    data = json.loads(metrics.read_text())
    assert data["profile"] == "smoke"
    assert data["exercises"] == dict.fromkeys(exercise_ids(nb), "not attempted")
