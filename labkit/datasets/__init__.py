"""Loaders for the public benchmarks (DESIGN §8): read the real on-disk formats, offline, safely.

| module | benchmark | entry point |
|---|---|---|
| ``lowra`` | LoWRA Bench (Spectral DeTuning) | ``open_lowra(root, subset)`` |
| ``lora_wise`` | LoRA-WiSE (DSiRe) | ``open_lora_wise(root, config, rank=None)`` |
| ``model_j`` | Model-J (ProbeX) | ``open_model_j(root, subset)`` |
| ``vthr`` | VTHR tree pickles (MoTHer) | ``load_vthr_graph(path)`` |
| ``probegen_zoos`` | INR zoos, CIFAR10-GS, CNN Wild Park (ProbeGen) | ``load_inr_zoo``, ``load_cifar10_gs``, ``load_wild_park`` |
| ``safe_pickle`` | allow-listed, bounded unpickling (no code runs) | ``restricted_load(file, allowed)`` |
| ``inspection`` | what a model file or folder holds (``labkit inspect PATH``) | ``inspect_path(path)`` |

Every loader raises ``BenchmarkMissingError`` (a ``FileNotFoundError``) when the data is not on disk, naming the
``data_scripts/download.py`` command that fetches it, and ``BenchmarkFormatError`` (a ``ValueError``) with a
one-line message saying what is wrong and what to do when a file has the wrong schema or the wrong rank; a
truncated or corrupt tensor file is ``labkit.safe_io.CorruptFileError`` (also a ``ValueError``). Tests run every loader on small files in the real formats (``tests/fixtures/``).
"""

from __future__ import annotations

from pathlib import Path

from labkit.paths import kit_folder
from labkit.safe_io import printable

__all__ = ["BenchmarkFormatError", "BenchmarkMissingError", "data_root", "require"]

# where each benchmark lands under data_root(): the `--dest` the README's download commands use
FOLDERS = {"lowra": "lowra", "lora-wise": "lora_wise", "model-j": "model_j", "probegen": "probegen"}


class BenchmarkFormatError(ValueError):
    """A benchmark file exists but is not in the expected format; the message says what is wrong and what to do."""


class BenchmarkMissingError(FileNotFoundError):
    """A benchmark is not on disk; the message names the download command that fetches it."""


def data_root(benchmark: str | None = None) -> Path:
    """The folder of the downloaded public benchmarks: ``$LABKIT_DATA``, else ``data`` in the checkout, else
    ``./data``.

    With ``benchmark`` ("lowra", "lora-wise", "model-j", "probegen") the benchmark's own sub-folder, e.g.
    ``data/lora_wise`` — where ``python data_scripts/download.py lora-wise --dest data/lora_wise`` puts it.
    """
    root = kit_folder("LABKIT_DATA", "data")
    if benchmark is None:
        return root
    if benchmark not in FOLDERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(FOLDERS)}")
    return root / FOLDERS[benchmark]


def require(path: str | Path, what: str, download: str | None) -> Path:
    """``path`` as a ``Path`` if it exists, else ``BenchmarkMissingError`` naming ``download`` (or the source)."""
    path = Path(path).expanduser()
    if not path.exists():
        how = f"fetch it with `python data_scripts/{download}`" if download else "see data_scripts/README.md"
        raise BenchmarkMissingError(f"{what} not found at {printable(path)}; {how}")
    return path
