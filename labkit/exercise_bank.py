"""The exercises of every lab: id → reference (a labkit function), test cases and a hint (DESIGN §6)."""

from __future__ import annotations

import torch

from labkit.exercises import register
from labkit.spectra import energy_fraction


def _energy_cases():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 1, generator=g), torch.randn(1, 4, generator=g)
    return [
        ("random 8×5 matrix, k=2", (torch.randn(8, 5, generator=g), 2)),
        ("wide 5×8 matrix, k=3", (torch.randn(5, 8, generator=g), 3)),
        ("rank-1 matrix, k=1 (all energy in one direction)", (u @ v, 1)),
        ("k=0 keeps nothing", (torch.randn(4, 4, generator=g), 0)),
        ("k larger than the rank keeps everything", (torch.randn(3, 7, generator=g), 5)),
        ("float64 input", (torch.randn(6, 6, generator=g, dtype=torch.float64), 2)),
    ]


register("00.energy", energy_fraction, _energy_cases,
         hint="torch.linalg.svdvals(W) gives σ largest first; return (σ[:k]²).sum() / (σ²).sum()")


def hints() -> dict[str, str]:
    """Exercise id → the hint the student copy's stub shows."""
    from labkit.exercises import EXERCISES

    return {ex_id: ex.hint for ex_id, ex in EXERCISES.items()}
