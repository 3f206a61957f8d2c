"""Exercise checkers with instant feedback, hints on request and honest fallbacks (DESIGN §6).

In a notebook, right after the learner's function::

    energy_fraction = labkit.exercises.check("00.energy", energy_fraction)

``check`` runs the learner's function and the reference on the exercise's named cases and prints one of

* ``✓ Exercise 00.energy passed (6/6 cases)``,
* ``✗ Exercise 00.energy failed: case 2/6 (wide 5×8 matrix, k=3) ...`` with expected vs got and, when the answer
  equals a typical mistake's, a one-line ``diagnosis:``,
* ``… Exercise 00.energy not attempted yet`` (the student copy's stub raises ``NotImplementedError``).

It returns the learner's function when every case passes, else the reference, so the rest of the notebook runs;
``which(id, name)`` says in a later cell which of the two is in use. ``hint(id)`` prints the next level of help.
The exercises themselves are data in ``labkit.exercise_bank``; this module is the checker that reads them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch

from labkit import report
from labkit.exercise_bank import EXERCISES, Exercise

__all__ = ["EXERCISES", "Exercise", "check", "hint", "run_cases", "which"]

_HINTS_SHOWN: dict[str, int] = {}  # exercise id -> hint levels printed so far
_PASSED: dict[str, bool] = {}  # exercise id -> whether the last check passed


def _exercise(exercise_id: str) -> Exercise:
    if exercise_id not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise_id!r}; known: {', '.join(sorted(EXERCISES))}")
    return EXERCISES[exercise_id]


def hint(exercise_id: str) -> str:
    """Print (and return) the next hint level of an exercise: level 1 first, then 2, ...; never the answer."""
    ex = _exercise(exercise_id)
    shown = _HINTS_SHOWN.get(exercise_id, 0)
    if shown >= len(ex.hints):
        text = (f"No more hints for {exercise_id} ({len(ex.hints)} given). Re-read the cell above, print the shapes "
                "of your intermediate tensors, or ask your instructor.")
    else:
        _HINTS_SHOWN[exercise_id] = shown + 1
        text = f"Hint {shown + 1}/{len(ex.hints)} for {exercise_id}: {ex.hints[shown]}"
    print(text)
    return text


def which(exercise_id: str, name: str) -> str:
    """Which implementation of an exercise the notebook is using now, for the cells after it: ``"your `name`"``
    once its check passed, else ``"the reference `name` (your exercise <id> is not passing yet)"``."""
    _exercise(exercise_id)
    if _PASSED.get(exercise_id):
        return f"your `{name}`"
    return f"the reference `{name}` (your exercise {exercise_id} is not passing yet)"


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
    """One line for a value: a tensor by shape, dtype and first values; a tuple or list of tensors item by item."""
    if isinstance(x, torch.Tensor):
        body = x.detach().flatten()[:6].tolist()
        return f"tensor of shape {list(x.shape)} ({x.dtype}), first values {[round(v, 5) for v in body]}"
    if isinstance(x, tuple | list) and any(isinstance(v, torch.Tensor) for v in x):
        return "(" + "; ".join(f"[{i}] {_describe(v)}" for i, v in enumerate(x)) + ")"
    text = repr(x)
    return text if len(text) <= 300 else text[:300] + " ..."


def _differs(got, expected, ex: Exercise) -> str | None:
    """None if ``got`` equals ``expected`` within the exercise's tolerances, else the first line of why not."""
    got = _as_comparable(got, expected)
    try:
        if isinstance(expected, float) and isinstance(got, float):
            if not math.isclose(got, expected, rel_tol=ex.rtol, abs_tol=ex.atol):
                return "values differ"
        else:
            torch.testing.assert_close(got, expected, rtol=ex.rtol, atol=ex.atol, check_dtype=False)
    except (AssertionError, TypeError, ValueError) as e:
        return str(e).strip().splitlines()[0]
    return None


def _diagnosis(ex: Exercise, args: tuple, got) -> str | None:
    """The message of the first typical mistake whose output on ``args`` equals the learner's ``got``."""
    for message, wrong in ex.mistakes:
        try:
            typical = wrong(*copy.deepcopy(args))
        except Exception:  # a mistake that cannot run on this case diagnoses nothing here
            continue
        if _differs(got, typical, ex) is None:
            return message
    return None


def run_cases(ex: Exercise, fn: Callable) -> tuple[str, str, str]:
    """Run ``fn`` on every case of ``ex``: ``(status, message, detail)`` with status 'passed' / 'failed' /
    'not attempted', the message to print, and for a failure the case and diagnosis in one line."""
    cases = ex.cases()
    for n, (name, args) in enumerate(cases, 1):
        expected = ex.reference(*copy.deepcopy(args))
        where = f"case {n}/{len(cases)} ({name})"
        try:
            got = fn(*copy.deepcopy(args))
        except NotImplementedError:
            return ("not attempted", f"… Exercise {ex.id} not attempted yet; labkit.exercises.hint({ex.id!r}) "
                    "prints a hint", "")
        except Exception as e:  # the learner's bug: report it, don't crash the notebook
            detail = f"{where} raised {type(e).__name__}: {e}"
            return "failed", f"✗ Exercise {ex.id} failed: {detail}", detail
        why = _differs(got, expected, ex)
        if why is not None:
            diagnosis = _diagnosis(ex, args, got)
            detail = f"{where} differs" + (f"; diagnosis: {diagnosis}" if diagnosis else "")
            message = (f"✗ Exercise {ex.id} failed: {where} differs: {why}\n"
                       f"  expected: {_describe(_as_comparable(expected, expected))}\n"
                       f"  got:      {_describe(_as_comparable(got, expected))}")
            if diagnosis:
                message += f"\n  diagnosis: {diagnosis}"
            return "failed", message, detail
    return "passed", f"✓ Exercise {ex.id} passed ({len(cases)}/{len(cases)} cases)", ""


def check(exercise_id: str, fn: Callable) -> Callable:
    """Check the learner's ``fn``; return it if it passes, else the reference implementation (with a warning)."""
    ex = _exercise(exercise_id)
    status, message, detail = run_cases(ex, fn)
    report.record_exercise(exercise_id, status, detail)
    _PASSED[exercise_id] = status == "passed"
    print(message)
    if status == "passed":
        return fn
    warnings.warn(f"Exercise {exercise_id}: {status}; the notebook continues with the reference solution "
                  f"(labkit.exercises.EXERCISES[{exercise_id!r}].reference).", stacklevel=2)
    return ex.reference
