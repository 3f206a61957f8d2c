"""The exercises of every lab, as data (DESIGN §6): ``EXERCISES`` maps an id such as ``"04.predict"`` to its
:class:`~labkit.exercise_bank.core.Exercise` (reference, cases, ladder numbers, hints, typical mistakes).

Each lab registers its exercises in its own module (``lab00`` … ``lab05``); importing this package loads them all.
References are labkit's own functions, so the exercise and the library can never disagree. This package imports no
checker: ``labkit.exercises`` imports it, never the other way round.
"""

from __future__ import annotations

from labkit.exercise_bank import lab00, lab01, lab02, lab03, lab04, lab05  # noqa: F401  (they register)
from labkit.exercise_bank.core import EXERCISES, Exercise, header_line, ladder_table, register

__all__ = ["EXERCISES", "Exercise", "header_line", "ladder_table", "register"]
