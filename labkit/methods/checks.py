"""Input checks the method modules share: one wording per check, and the caller's own message.

``labkit.methods`` imports nothing from the rest of labkit, so these live here rather than in the kit's helpers.
Checks that only one method makes stay in that method's module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["as_float", "require_choice", "require_finite"]


def as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged if float32 or float64, else converted to float32 (integer or half-precision weights)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def require_finite(x: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` if ``x`` (any shape) holds a NaN or an infinity."""
    if not torch.isfinite(x).all():
        raise ValueError(message)


def require_choice(value: object, choices: Sequence, name: str) -> None:
    """Raise ``ValueError("<name> must be one of <choices>, got <value!r>")`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
