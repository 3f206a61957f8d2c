"""labkit — a Jupyter-first course and lab kit on learning from, and attacking, neural-network weights.

Notebooks start with ``cfg = labkit.setup(profile, lab="04")``, which also starts recording that lab's metrics
(its banner says where they go; ``record=False`` opts out). Submodules (``labkit.report``,
``labkit.exercises``, ``labkit.zoo``, …) are imported on first use so ``import labkit`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

__version__ = "0.1.0"
__all__ = ["__version__", "setup"]


def setup(*args, **kwargs):
    """Resolve profile, device, seeds and folders and start recording the lab's metrics; see
    :func:`labkit.session.setup`."""
    from labkit.session import setup as _setup

    return _setup(*args, **kwargs)


def __getattr__(name: str):
    """``labkit.<submodule>`` imports the submodule on first use."""
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:
        return importlib.import_module(f"labkit.{name}")
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
