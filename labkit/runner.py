"""Execute notebooks with papermill into ``runs/<profile>/`` (DESIGN §7: ``labkit run``).

For each notebook: check it has a literals-only ``parameters`` cell, inject ``profile``, run it with
``$LABKIT_PROFILE`` and ``$LABKIT_METRICS`` set for the kernel, write ``runs/<P>/<stem>.ipynb`` and make sure
``runs/<P>/<stem>/metrics.json`` holds the wall time of the whole run.

A failure is one line naming the notebook and the cell: an error in a cell (its exception), a cell that ran past
the per-cell timeout, or a kernel that died (out of memory, a crash in native code, ``os._exit``). What the kernel
process and the execution library print along the way (connection warnings, ZMQ tracebacks of a kernel shut down
mid-cell, "Kernel died while waiting for execute reply") goes to ``runs/<P>/<stem>/kernel.log``, not the terminal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labkit.course import LABS
from labkit.nbtools import NotebookError, parameter_values, read_notebook
from labkit.paths import CHECKOUT
from labkit.report import METRICS_LIMIT
from labkit.safe_io import printable, read_json, write_json_atomic
from labkit.session import resolve_profile

__all__ = ["NotebookRun", "cell_durations", "default_notebooks", "find_notebooks", "run_notebook"]


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
    return CHECKOUT / "notebooks"


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


def cell_durations(executed: Path) -> list[tuple[int, float, str]]:
    """``(cell index, seconds, first source line)`` of every code cell papermill ran in the executed notebook
    ``executed`` (papermill records each cell's duration in its metadata); cells it never ran are left out."""
    nb = read_notebook(executed)
    out = []
    for i, cell in enumerate(nb.cells):
        seconds = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if cell.cell_type == "code" and seconds is not None:
            out.append((i, float(seconds), _first_line(cell.source)))
    return out


def _first_line(text) -> str:
    return str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""


def _cell_label(count, source) -> str:
    """'cell In [7] (`f = fit(...)`)': the execution count and the first source line."""
    where = f"cell In [{count}]" if count is not None else "a cell"
    source = _first_line(source)
    return where + (f" (`{printable(source[:60])}`)" if source else "")


def _failure_line(exc, stem: str) -> str:
    """'04_dsire failed in cell In [7] (`f = fit(...)`): ValueError: ...' from papermill's exception."""
    where = _cell_label(getattr(exc, "exec_count", None), getattr(exc, "source", ""))
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = printable(_first_line(getattr(exc, "evalue", exc)))
    return f"{stem} failed in {where}: {printable(ename)}: {evalue}".rstrip()


def _running_cell(output: Path) -> str:
    """Where execution stopped: 'in cell In [7] (`...`)', the last code cell of the executed copy that papermill
    started (its metadata holds a start time); 'before any cell ran'; 'in a cell' when the copy cannot tell.
    A fresh kernel runs the code cells in order, so cell k's count is k even when the kernel died before the
    copy recorded it."""
    try:
        code = [c for c in json.loads(output.read_text()).get("cells", []) if c.get("cell_type") == "code"]
        started = [(k, c) for k, c in enumerate(code, 1)
                   if (c.get("metadata", {}).get("papermill") or {}).get("start_time")]
    except (OSError, ValueError, AttributeError):
        return "in a cell"
    if not started:
        return "before any cell ran"
    k, cell = started[-1]
    source = cell.get("source", "")
    return "in " + _cell_label(cell.get("execution_count") or k, "".join(source) if isinstance(source, list) else source)


def _interrupted_line(exc: Exception, stem: str, output: Path, timeout: float | None, log: Path) -> str | None:
    """One line for a cell that timed out or a kernel that died (None for any other exception)."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(exc, CellTimeoutError):
        if "IOPub" in str(exc):
            why = "the kernel's output stream stalled (IOPub timeout)"
        else:
            found = re.search(r"after (\d+) seconds", str(exc))
            seconds = f"{timeout:g}" if timeout is not None else found.group(1) if found else "?"
            why = f"timed out after {seconds} s"
        return (f"{stem} failed {_running_cell(output)}: {why}; make the cell faster or give a larger "
                "--timeout")
    if isinstance(exc, DeadKernelError):
        return (f"{stem} failed {_running_cell(output)}: the kernel died (out of memory, a crash in native code "
                f"or os._exit); its output is in {printable(log)}")
    return None


def _read_metrics(path: Path, stem: str) -> tuple[dict, str | None]:
    """What the notebook recorded in ``path`` (``{}`` metrics if nothing), and a one-line problem if the file
    is there but is not the JSON object ``labkit.report.record`` writes."""
    fresh = {"notebook": stem, "metrics": {}}
    if not path.is_file():
        return fresh, None
    try:
        data = read_json(path, METRICS_LIMIT, "metrics.json")
    except (OSError, ValueError) as e:
        return fresh, f"{stem} left {printable(path)} unreadable ({printable(e)}); its metrics are lost"
    if not isinstance(data, dict):
        return fresh, (f"{stem} left a JSON {type(data).__name__} in {printable(path)}, not the object "
                       "labkit.report.record writes; its metrics are lost")
    return data, None


@contextmanager
def _kernel_log(path: Path):
    """Send the kernel process's stdout/stderr and the execution library's log records to ``path``; yields the
    kernel manager class to hand to papermill (the same as nbclient's default, with its output redirected)."""
    from jupyter_client.manager import AsyncKernelManager

    logger = logging.getLogger("papermill")  # nbclient logs through papermill's logger
    with open(path, "w") as log:

        class _LoggedKernelManager(AsyncKernelManager):
            async def start_kernel(self, **kw):  # the kernel inherits these file descriptors
                kw.setdefault("stdout", log)
                kw.setdefault("stderr", log)
                return await super().start_kernel(**kw)

        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s | %(message)s"))
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield _LoggedKernelManager
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


def run_notebook(path: Path, profile: str, runs_root: Path = Path("runs"), timeout: float | None = None,
                 cwd: Path | None = None, kernel_name: str = "python3", output: Path | None = None,
                 parameters: dict | None = None) -> NotebookRun:
    """Execute one notebook; never raises for a failing cell (see ``NotebookRun.error``).

    ``parameters``: further values for the notebook's parameters cell (e.g. ``{"data_source": "public"}``); each
    must be one the cell already sets (``NotebookError`` otherwise); ``profile`` is always the ``profile`` argument.
    ``timeout``: seconds a cell may run (rounded up to whole seconds; None: no limit).
    """
    import papermill

    if timeout is not None:
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"the per-cell timeout must be a positive number of seconds, got {timeout}")
        timeout = math.ceil(timeout)  # the kernel client counts whole seconds
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
    log = metrics.parent / "kernel.log"
    error, t0 = None, time.perf_counter()
    try:
        with _kernel_log(log) as kernel_manager_class:
            papermill.execute_notebook(
                str(path), str(output), parameters={**extra, "profile": profile}, kernel_name=kernel_name,
                cwd=str(cwd or path.parent), execution_timeout=timeout, progress_bar=False, log_output=False,
                kernel_manager_class=kernel_manager_class,
            )
    except papermill.PapermillExecutionError as e:
        error = _failure_line(e, path.stem)
    except Exception as e:  # timeout, kernel death, kernel that never started: one line, go on with other notebooks
        error = _interrupted_line(e, path.stem, output, timeout, log) or \
            f"{path.stem} failed: {type(e).__name__}: {printable(_first_line(e))} (kernel output: {printable(log)})"
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    data, problem = _read_metrics(metrics, path.stem)
    error = error or problem
    data.update(notebook=path.stem, profile=profile, seconds=round(seconds, 2), ok=error is None)
    data.setdefault("device", None)
    if error:
        data["error"] = error
    write_json_atomic(metrics, data)
    return NotebookRun(path, output, metrics, seconds, error)
