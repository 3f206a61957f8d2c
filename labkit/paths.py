"""Where the kit keeps its folders: an environment variable, else a folder in the checkout, else one in the cwd.

``labkit.session.kit_home`` (zoos and caches: ``$LABKIT_HOME`` or ``.labkit``) and ``labkit.datasets.data_root``
(the public benchmarks: ``$LABKIT_DATA`` or ``data``) both resolve their folder with ``kit_folder``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKOUT", "kit_folder"]

CHECKOUT = Path(__file__).resolve().parents[1]  # the folder above the package: the repository when run from one


def kit_folder(env_var: str, name: str) -> Path:
    """``$env_var`` (``~`` expanded) if set and non-empty, else ``name`` in the checkout (when ``pyproject.toml`` and
    ``notebooks/`` lie beside the package), else ``./name``; always absolute."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser().resolve()
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "notebooks").is_dir():
        return CHECKOUT / name
    return Path(name).resolve()
