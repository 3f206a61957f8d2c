"""Shared fixtures: a private LABKIT_HOME, tiny zoos built once per session, small notebooks written on the fly."""

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


# small variants of the smoke recipes (seconds to build); the detune zoo has 15 LoRAs: LoWRA's exact 80 columns
TINY = {
    "digit-diffusion": {
        "root": {"steps": 60, "batch": 64, "lr": 2e-3, "ema": 0.9, "width": 256, "blocks": 3},
        "size": {"digits": [0, 8], "picks": 1, "low": [1, 2, 3], "medium": [1, 10], "steps": 10, "lr": 1e-3},
        "concept": {"digits": [0], "styles": ["plain"], "per_concept": 1, "n": 5, "heldout": 0, "steps": 2,
                    "lr": 1e-3},
        "detune": {"count": 15, "n": 20, "steps": 20, "lr": 2e-3},
        "chunk": 16,
    },
    "digit-trees": {"roots": ["mlp_a", "cnn"], "root_epochs": 2, "children": 4, "lora_children": 1,
                    "grand_parents": 1, "grandchildren": 1, "lora_grandchildren": 1, "epochs": [1, 1]},
}


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """``tiny_zoo(recipe, tiny=True) -> ZooStore``: the smoke zoo of ``recipe`` (with the ``TINY`` settings when
    ``tiny``), built once per test session in one shared folder and reused by every module that asks."""
    from labkit import zoo

    home = tmp_path_factory.mktemp("labkit_home") / "zoos"  # the layout of LABKIT_HOME

    def build(recipe: str, tiny: bool = True):
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("LABKIT_PROFILE", raising=False)
            return zoo.build(recipe, profile="smoke", home=home, **(TINY.get(recipe, {}) if tiny else {}))

    return build


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


def notebook_text(path: Path) -> str:
    """Everything an executed notebook printed: stream text and error values of its code cells."""
    nb = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") or o.get("evalue", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def link_public_data(root: Path, monkeypatch, **folders: Path) -> Path:
    """``$LABKIT_DATA`` = ``root``, holding one symlink per benchmark folder (``lowra=FIXTURE`` → ``root/lowra``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in folders.items():
        (root / name).symlink_to(target, target_is_directory=True)
    monkeypatch.setenv("LABKIT_DATA", str(root))
    return root
