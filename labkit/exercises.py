"""Exercise checkers with instant feedback (DESIGN §6).

In a notebook, right after the learner's function::

    energy_fraction = labkit.exercises.check("00.energy", energy_fraction)

``check`` runs the learner's function and the reference on fixed and edge cases, prints expected vs got for the
first case that differs, and returns the learner's function when every case passes — otherwise the reference
(with a warning), so the rest of the notebook still runs. A function that raises ``NotImplementedError`` (the
student copy's stub) is reported as "not attempted", never as an error.

The exercises themselves (references, cases, hints) are data in ``labkit.exercise_bank``; this module is the
checker that reads them (``EXERCISES`` is the bank's, re-exported here).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch

from labkit import report
from labkit.exercise_bank import EXERCISES, Exercise

__all__ = ["EXERCISES", "Exercise", "check", "run_cases"]


def _as_comparable(got, expected):
    if isinstance(expected, torch.Tensor) and not isinstance(got, torch.Tensor):
        try:
            return torch.as_tensor(got, dtype=expected.dtype)
        except (TypeError, ValueError, RuntimeError):
            return got
    if isinstance(expected, float | int) and isinstance(got, torch.Tensor) and got.numel() == 1:
        return got.item()
    return got


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        body = x.detach().flatten()[:6].tolist()
        return f"tensor of shape {list(x.shape)} ({x.dtype}), first values {[round(v, 5) for v in body]}"
    return repr(x)


def run_cases(ex: Exercise, fn: Callable) -> tuple[str, str]:
    """Run ``fn`` on every case of ``ex``; return (status, message) with status 'passed' / 'failed' / 'not attempted'."""
    cases = ex.cases()
    for n, (name, args) in enumerate(cases, 1):
        expected = ex.reference(*copy.deepcopy(args))
        try:
            got = fn(*copy.deepcopy(args))
        except NotImplementedError:
            return "not attempted", f"Exercise {ex.id}: not attempted yet. Hint: {ex.hint}"
        except Exception as e:  # the learner's bug: report it, don't crash the notebook
            return "failed", f"Exercise {ex.id}: case {n}/{len(cases)} ({name}) raised {type(e).__name__}: {e}"
        got = _as_comparable(got, expected)
        try:
            if isinstance(expected, float) and isinstance(got, float):
                if not math.isclose(got, expected, rel_tol=ex.rtol, abs_tol=ex.atol):
                    raise AssertionError("values differ")
            else:
                torch.testing.assert_close(got, expected, rtol=ex.rtol, atol=ex.atol, check_dtype=False)
        except (AssertionError, TypeError, ValueError) as e:
            detail = str(e).strip().splitlines()[0]
            return "failed", (f"Exercise {ex.id}: case {n}/{len(cases)} ({name}) differs — {detail}\n"
                              f"  expected: {_describe(expected)}\n  got:      {_describe(got)}")
    return "passed", f"✓ Exercise {ex.id} passed ({len(cases)}/{len(cases)} cases)"


def check(exercise_id: str, fn: Callable) -> Callable:
    """Check the learner's ``fn``; return it if it passes, else the reference implementation (with a warning)."""
    if exercise_id not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise_id!r}; known: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[exercise_id]
    status, message = run_cases(ex, fn)
    report.record_exercise(exercise_id, status)
    print(message)
    if status == "passed":
        return fn
    warnings.warn(f"Exercise {exercise_id}: {status}; the notebook continues with the reference solution "
                  f"(labkit.exercises.EXERCISES[{exercise_id!r}].reference).", stacklevel=2)
    return ex.reference
