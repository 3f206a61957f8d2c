"""What an exercise is, as data: the reference, the cases, its place on the lab's ladder, hints and mistakes.

An exercise is registered once, in its lab's module (``labkit/exercise_bank/labNN.py``)::

    register("04.predict", dsire.predict, _predict_cases,
             title="DSiRe's predict: voters and a majority", difficulty=3, importance=5, minutes=15,
             hints=("level 1: what the function must do, in words",
                    "level 2: the shapes of each step",
                    "level 3: the library calls to use"),
             mistakes=(("ties broken towards the larger size; the paper keeps the first size seen", _ties_wrong),))

* ``difficulty`` and ``importance`` are 1-5 and ``minutes`` is the expected time (ARENA's exercise header); the lab's
  markdown header line and ladder table are generated from them (``header_line``, ``ladder_table``).
* ``hints`` are rising levels of help, prose and shapes in plain ASCII, never the answer;
  ``labkit.exercises.hint(id)`` prints the next one.
* ``mistakes`` are typical wrong answers: a one-line diagnosis and a function that makes exactly that mistake. When
  a learner's answer fails a case and equals a mistake's output there, the checker prints its diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EXERCISES", "Exercise", "header_line", "ladder_table", "register"]


@dataclass(frozen=True)
class Exercise:
    """One exercise of a lab's ladder (see the module docstring)."""

    id: str
    reference: Callable
    cases: Callable[[], list[tuple[str, tuple]]]
    title: str
    difficulty: int
    importance: int
    minutes: int
    hints: tuple[str, ...]
    mistakes: tuple[tuple[str, Callable], ...] = ()
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def lab(self) -> str:
        return self.id.split(".", 1)[0]


EXERCISES: dict[str, Exercise] = {}


def _check_hint(exercise_id: str, text: str) -> None:
    if not text.strip():
        raise ValueError(f"exercise {exercise_id}: an empty hint")
    if not text.isascii():
        bad = sorted({c for c in text if not c.isascii()})
        raise ValueError(f"exercise {exercise_id}: hints are plain ASCII so they can be pasted; found {bad}")


def register(exercise_id: str, reference: Callable, cases: Callable[[], list[tuple[str, tuple]]], *, title: str,
             difficulty: int, importance: int, minutes: int, hints: tuple[str, ...],
             mistakes: tuple[tuple[str, Callable], ...] = (), rtol: float = 1e-5, atol: float = 1e-6) -> Exercise:
    """Add one exercise to ``EXERCISES`` (an id may be added once); the header numbers and hints are checked."""
    if exercise_id in EXERCISES:
        raise ValueError(f"exercise {exercise_id!r} is registered twice")
    for name, value in (("difficulty", difficulty), ("importance", importance)):
        if not (isinstance(value, int) and 1 <= value <= 5):
            raise ValueError(f"exercise {exercise_id}: {name} must be 1-5, got {value!r}")
    if not (isinstance(minutes, int) and minutes >= 1):
        raise ValueError(f"exercise {exercise_id}: minutes must be a positive integer, got {minutes!r}")
    if not 1 <= len(hints) <= 3:
        raise ValueError(f"exercise {exercise_id}: give 1-3 hint levels, got {len(hints)}")
    for text in hints:
        _check_hint(exercise_id, text)
    ex = Exercise(exercise_id, reference, cases, title, difficulty, importance, minutes, tuple(hints),
                  tuple(mistakes), rtol, atol)
    EXERCISES[exercise_id] = ex
    return ex


def header_line(exercise_id: str) -> str:
    """The markdown line that opens an exercise in its notebook, e.g.
    ``**Exercise 04.predict: DSiRe's predict** | difficulty 3/5 | importance 5/5 | ~15 min``."""
    ex = EXERCISES[exercise_id]
    return (f"**Exercise {ex.id}: {ex.title}** | difficulty {ex.difficulty}/5 | importance {ex.importance}/5 | "
            f"~{ex.minutes} min")


def ladder_table(lab: str) -> str:
    """The markdown table of a lab's exercises (id, title, difficulty, importance, minutes) and their total."""
    rows = [ex for ex in EXERCISES.values() if ex.lab == lab]
    lines = ["| exercise | what you build | difficulty | importance | minutes |", "|---|---|---|---|---|"]
    lines += [f"| {ex.id} | {ex.title} | {ex.difficulty}/5 | {ex.importance}/5 | {ex.minutes} |" for ex in rows]
    lines.append(f"| **total** | {len(rows)} exercises | | | **{sum(ex.minutes for ex in rows)}** |")
    return "\n".join(lines)
