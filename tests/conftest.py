"""Shared fixtures: a private LABKIT_HOME, and small notebooks written on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")  # in-process tests draw off-screen; notebook kernels keep the inline backend

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def kit_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "labkit_home"
    monkeypatch.setenv("LABKIT_HOME", str(home))
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.delenv("LABKIT_METRICS", raising=False)
    return home


def make_notebook(path: Path, *cells: tuple[str, str] | str, params: str | None = 'profile = "workshop"') -> Path:
    """Write a notebook: ``params`` becomes the tagged parameters cell, then code cells (or ("md", text))."""
    nb = nbformat.v4.new_notebook()
    if params is not None:
        c = nbformat.v4.new_code_cell(params)
        c.metadata["tags"] = ["parameters"]
        nb.cells.append(c)
    for cell in cells:
        if isinstance(cell, tuple) and cell[0] == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(cell))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
