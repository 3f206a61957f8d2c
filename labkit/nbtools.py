"""Small, pure predicates and transforms over notebooks (DESIGN §6): parameters cells, exercise blocks,
student and instructor copies.

An exercise in a source notebook is one code cell::

    def energy_fraction(W, k):
        \"\"\"...\"\"\"
        ### BEGIN SOLUTION
        s = torch.linalg.svdvals(W)
        ...
        ### END SOLUTION

    energy_fraction = labkit.exercises.check("00.energy", energy_fraction)

The student copy replaces every block between the markers with
``raise NotImplementedError("Exercise 00.energy: <hint>")`` at the block's indentation; the instructor copy is
the source as it is. The exercise id is read from the ``check("...")`` call in the same cell.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat

__all__ = [
    "NotebookError",
    "exercise_ids",
    "has_outputs",
    "has_solution",
    "parameter_values",
    "parameters_cell",
    "read_notebook",
    "student_copy",
    "student_source",
    "write_copies",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_CHECK = re.compile(r"""exercises\.check\(\s*["']([\w.\-]+)["']""")


class NotebookError(ValueError):
    """A notebook that breaks the kit's conventions; the message says which notebook and cell."""


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook not found: {path}")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several unrelated types for a broken file
        raise NotebookError(f"{path} is not a readable notebook ({type(e).__name__}: {e})") from None


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parameters_cell(nb, name: str = "notebook") -> int:
    """Index of the one code cell tagged ``parameters``; a clear error if there is none or more than one."""
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "parameters" in _tags(c)]
    if not found:
        raise NotebookError(f"{name} has no cell tagged 'parameters'; add one with e.g. profile = \"workshop\"")
    if len(found) > 1:
        raise NotebookError(f"{name} has {len(found)} cells tagged 'parameters' (cells {found}); keep exactly one")
    return found[0]


def parameter_values(nb, name: str = "notebook") -> dict[str, object]:
    """The parameters cell as a dict; every statement must assign a literal (papermill's contract)."""
    src = nb.cells[parameters_cell(nb, name)].source
    values = {}
    for node in ast.parse(src).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        if not isinstance(target, ast.Name) or node.value is None:
            raise NotebookError(f"{name}: the parameters cell may only assign literals to names; found "
                                f"{ast.unparse(node)!r}")
        try:
            values[target.id] = ast.literal_eval(node.value)
        except ValueError:
            raise NotebookError(f"{name}: parameter {target.id!r} is not a literal ({ast.unparse(node.value)}); "
                                "compute derived values in the next cell") from None
    return values


def has_solution(cell) -> bool:
    return cell.cell_type == "code" and BEGIN in cell.source


def exercise_ids(nb) -> list[str]:
    """Ids of the exercises in a notebook, in order (one per solution cell)."""
    return [_exercise_id(c, i) for i, c in enumerate(nb.cells) if has_solution(c)]


def _exercise_id(cell, index: int) -> str:
    ids = _CHECK.findall(cell.source)
    if len(ids) != 1:
        raise NotebookError(f"cell {index} has a solution block but {len(ids)} labkit.exercises.check(\"<id>\", ...) "
                            "calls; put exactly one check call in the same cell")
    return ids[0]


def student_source(source: str, exercise_id: str, hint: str = "") -> str:
    """Replace each ``### BEGIN SOLUTION`` … ``### END SOLUTION`` block by a NotImplementedError stub."""
    out, inside, indent = [], False, ""
    message = f"Exercise {exercise_id}: " + (hint or "replace this line with your solution")
    for lineno, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise NotebookError(f"exercise {exercise_id}: nested {BEGIN!r} at line {lineno}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f"{indent}raise NotImplementedError({message!r})")
        elif stripped == END:
            if not inside:
                raise NotebookError(f"exercise {exercise_id}: {END!r} without {BEGIN!r} at line {lineno}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookError(f"exercise {exercise_id}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def student_copy(nb, hints: dict[str, str] | None = None):
    """A copy of ``nb`` with every solution replaced by a stub (outputs cleared)."""
    hints = hints or {}
    nb = nbformat.from_dict(nb)  # deep copy
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if has_solution(cell):
                ex = _exercise_id(cell, i)
                cell.source = student_source(cell.source, ex, hints.get(ex, ""))
    return nb


def has_outputs(nb) -> bool:
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells)


def write_copies(notebooks: list[Path], out: Path, hints: dict[str, str] | None = None) -> list[Path]:
    """Write ``out/student/<name>`` and ``out/instructor/<name>`` for every notebook; return written paths."""
    written = []
    for path in notebooks:
        nb = read_notebook(path)
        for variant, copy in (("student", student_copy(nb, hints)), ("instructor", nb)):
            target = Path(out) / variant / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(copy, target)
            written.append(target)
    return written
