"""Lab 00 exercises: spectra (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
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


def _energy_of_singular_values(W, k):
    s = torch.linalg.svdvals(W)
    return s[:k].sum() / s.sum()


register("00.energy", energy_fraction, _energy_cases, title="Energy in the top-k singular values", difficulty=1,
         importance=3, minutes=5,
         hints=("The singular values of W, largest first, say how much of W lies along each direction; the "
                "energy of a set of directions is a sum of squares.",
                "Compute the singular values once (a vector of min(d_out, d_in) values); the answer is the ratio of "
                "two sums, a number between 0 and 1.",
                "torch.linalg.svdvals returns the singular values sorted largest first; slice the first k."),
         mistakes=(("summed the singular values themselves; energy sums their squares", _energy_of_singular_values),))
