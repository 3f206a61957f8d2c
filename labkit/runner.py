"""Execute notebooks with papermill into ``runs/<profile>/`` (DESIGN §7: ``labkit run``).

For each notebook: check it has a literals-only ``parameters`` cell, inject ``profile``, run it with
``$LABKIT_PROFILE`` and ``$LABKIT_METRICS`` set for the kernel, write ``runs/<P>/<stem>.ipynb`` and make sure
``runs/<P>/<stem>/metrics.json`` holds the wall time of the whole run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.course import LABS
from labkit.nbtools import NotebookError, parameter_values, read_notebook
from labkit.report import write_json_atomic
from labkit.session import resolve_profile

__all__ = ["NotebookRun", "default_notebooks", "find_notebooks", "run_notebook"]


@dataclass
class NotebookRun:
    notebook: Path
    output: Path
    metrics: Path
    seconds: float
    error: str | None = None  # one line: which cell failed and why

    @property
    def ok(self) -> bool:
        return self.error is None


def notebooks_dir() -> Path:
    """``./notebooks`` if the working directory has one, else the checkout's ``notebooks/``."""
    here = Path("notebooks")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "notebooks"


def default_notebooks() -> list[Path]:
    """Every course notebook, in course order (notebooks not in the course map follow, by name)."""
    folder = notebooks_dir()
    found = sorted(folder.glob("*.ipynb"))
    order = {lab.stem: i for i, lab in enumerate(LABS.values())}
    return sorted(found, key=lambda p: (order.get(p.stem, len(order)), p.name))


def find_notebooks(names: list[str]) -> list[Path]:
    """Resolve command-line names: a path, a file in notebooks/, a stem, or a lab number such as ``04``."""
    if not names:
        return default_notebooks()
    folder, out = notebooks_dir(), []
    for name in names:
        candidates = [Path(name), folder / name, folder / f"{name}.ipynb"]
        if name in LABS:
            candidates.append(folder / f"{LABS[name].stem}.ipynb")
        path = next((c for c in candidates if c.is_file() and c.suffix == ".ipynb"), None)
        if path is None:
            raise NotebookError(f"notebook not found: {name!r} (looked in {folder}; give a path, a name such as "
                                f"04_dsire or a lab number such as 04)")
        out.append(path)
    return out


def _first_line(text) -> str:
    return str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""


def _failure_line(exc, stem: str) -> str:
    """'04_dsire failed in cell In [7] (`f = fit(...)`): ValueError: ...' from papermill's exception."""
    cell = getattr(exc, "exec_count", None)
    where = f"cell In [{cell}]" if cell is not None else "a cell"
    source = _first_line(getattr(exc, "source", ""))
    if source:
        where += f" (`{source[:60]}`)"
    ename = getattr(exc, "ename", type(exc).__name__)
    return f"{stem} failed in {where}: {ename}: {_first_line(getattr(exc, 'evalue', exc))}".rstrip()


def run_notebook(path: Path, profile: str, runs_root: Path = Path("runs"), timeout: float | None = None,
                 cwd: Path | None = None, kernel_name: str = "python3", output: Path | None = None,
                 parameters: dict | None = None) -> NotebookRun:
    """Execute one notebook; never raises for a failing cell (see ``NotebookRun.error``).

    ``parameters``: further values for the notebook's parameters cell (e.g. ``{"data_source": "public"}``); each
    must be one the cell already sets (``NotebookError`` otherwise); ``profile`` is always the ``profile`` argument.
    """
    import papermill

    profile = resolve_profile(profile)
    path = Path(path)
    nb = read_notebook(path)
    params = parameter_values(nb, path.name)
    if "profile" not in params:
        raise NotebookError(f"{path.name}: the parameters cell must set profile = \"workshop\" (found "
                            f"{', '.join(params) or 'nothing'})")
    extra = dict(parameters or {})
    extra.pop("profile", None)
    unknown = [k for k in extra if k not in params]
    if unknown:
        raise NotebookError(f"{path.name}: its parameters cell does not set {', '.join(unknown)} (it sets "
                            f"{', '.join(params)})")
    out_dir = Path(runs_root) / profile
    output = Path(output) if output else out_dir / path.name
    metrics = out_dir / path.stem / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.unlink(missing_ok=True)  # never report numbers from an earlier run

    kernel_env = {"LABKIT_PROFILE": profile, "LABKIT_METRICS": str(metrics.resolve()),
                  "MPLBACKEND": "module://matplotlib_inline.backend_inline"}  # figures into the notebook
    env_before = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    error, t0 = None, time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path), str(output), parameters={**extra, "profile": profile}, kernel_name=kernel_name,
            cwd=str(cwd or path.parent), execution_timeout=timeout, progress_bar=False, log_output=False,
        )
    except papermill.PapermillExecutionError as e:
        error = _failure_line(e, path.stem)
    except Exception as e:  # kernel death, timeout: report as one line, keep going with other notebooks
        error = f"{path.stem} failed: {type(e).__name__}: {_first_line(e)}"
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    data = json.loads(metrics.read_text()) if metrics.is_file() else {"notebook": path.stem, "metrics": {}}
    data.update(notebook=path.stem, profile=profile, seconds=round(seconds, 2), ok=error is None)
    data.setdefault("device", None)
    if error:
        data["error"] = error
    write_json_atomic(metrics, data)
    return NotebookRun(path, output, metrics, seconds, error)
