"""Small, pure predicates and transforms over notebooks (DESIGN §6): parameters cells, exercise blocks,
student and instructor copies.

An exercise in a source notebook is one code cell in which the learner's part is marked (nbgrader's solution
regions), optionally followed by the scaffold the student copy shows in its place::

    def majority_vote(votes):
        \"\"\"...\"\"\"
        winners = []
        for row in votes.tolist():
            ### BEGIN SOLUTION
            winners.append(collections.Counter(row).most_common(1)[0][0])
            ### END SOLUTION
            ### BEGIN SCAFFOLD
            # winners.append(...)  # the most common value of row; on a tie, the first seen
            ### END SCAFFOLD
        return torch.tensor(winners)

    majority_vote = labkit.exercises.check("04.majority_vote", majority_vote)

The student copy replaces each solution region by ``raise NotImplementedError(...)`` at its indentation, followed
by the scaffold's lines uncommented (the skeleton with ``...`` where the learner writes); the instructor copy keeps
the solution and drops the scaffold. Both come from this one source. The exercise id is read from the
``check("...")`` call in the same cell.
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
    "instructor_copy",
    "instructor_source",
    "parameter_values",
    "parameters_cell",
    "read_notebook",
    "solution_lines",
    "student_copy",
    "student_source",
    "write_copies",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_SCAFFOLD, END_SCAFFOLD = "### BEGIN SCAFFOLD", "### END SCAFFOLD"
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


def _regions(source: str, exercise_id: str):
    """Each line of ``source`` tagged 'code', 'solution' or 'scaffold' (marker lines dropped); errors name the line."""
    region = "code"
    for lineno, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        opening = {BEGIN: "solution", BEGIN_SCAFFOLD: "scaffold"}.get(stripped)
        closing = {END: "solution", END_SCAFFOLD: "scaffold"}.get(stripped)
        if opening:
            if region != "code":
                raise NotebookError(f"exercise {exercise_id}: {stripped!r} inside a {region} region at line {lineno}")
            region = opening
            yield "open-" + opening, line
        elif closing:
            if region != closing:
                raise NotebookError(f"exercise {exercise_id}: {stripped!r} without its BEGIN at line {lineno}")
            region = "code"
        else:
            yield region, line
    if region != "code":
        raise NotebookError(f"exercise {exercise_id}: a {region} region is never closed")


def _uncomment(line: str) -> str:
    """A scaffold line ``    # x = ...`` as code ``    x = ...`` (a line without ``#`` stays as it is)."""
    body = line.lstrip()
    indent = line[: len(line) - len(body)]
    if body.startswith("# "):
        return indent + body[2:]
    return indent + body[1:] if body.startswith("#") else line


def student_source(source: str, exercise_id: str) -> str:
    """The student's version of an exercise cell: each solution region becomes a ``NotImplementedError`` stub and
    the scaffold regions become code (the skeleton with ``...`` to fill in)."""
    out = []
    for kind, line in _regions(source, exercise_id):
        if kind == "open-solution":
            indent = line[: len(line) - len(line.lstrip())]
            message = (f"Exercise {exercise_id}: write your code here (fill in the ... below), then delete this "
                       f'line; labkit.exercises.hint("{exercise_id}") prints a hint')
            out.append(f"{indent}raise NotImplementedError({message!r})")
        elif kind == "scaffold":
            out.append(_uncomment(line))
        elif kind == "code":
            out.append(line)
    return "\n".join(out)


def instructor_source(source: str, exercise_id: str) -> str:
    """The instructor's version of an exercise cell: the solution kept, the scaffold regions dropped."""
    return "\n".join(line for kind, line in _regions(source, exercise_id) if kind in ("code", "solution"))


def solution_lines(source: str, exercise_id: str) -> list[str]:
    """The code lines (stripped, not blank, not comments) of an exercise cell's solution regions."""
    return [line.strip() for kind, line in _regions(source, exercise_id)
            if kind == "solution" and line.strip() and not line.strip().startswith("#")]


def _copy(nb, transform):
    nb = nbformat.from_dict(nb)  # deep copy
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if has_solution(cell):
                cell.source = transform(cell.source, _exercise_id(cell, i))
    return nb


def student_copy(nb):
    """A copy of ``nb`` with every solution replaced by its stub and scaffold (outputs cleared)."""
    return _copy(nb, student_source)


def instructor_copy(nb):
    """A copy of ``nb`` with every solution and no scaffold (outputs cleared)."""
    return _copy(nb, instructor_source)


def has_outputs(nb) -> bool:
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells)


def write_copies(notebooks: list[Path], out: Path) -> list[Path]:
    """Write ``out/student/<name>`` and ``out/instructor/<name>`` for every notebook; return written paths."""
    written = []
    for path in notebooks:
        nb = read_notebook(path)
        for variant, copy in (("student", student_copy(nb)), ("instructor", instructor_copy(nb))):
            target = Path(out) / variant / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(copy, target)
            written.append(target)
    return written
