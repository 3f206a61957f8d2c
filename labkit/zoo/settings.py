"""Recipe settings as frozen dataclasses, and the way back from what ``zoo.json`` recorded.

A recipe's ``settings(profile)`` returns a frozen dataclass (nested ones for groups of settings, tuples for
lists). The zoo records ``dataclasses.asdict(settings)`` in ``zoo.json`` and hashes it into the folder name, and
the recipe trains from the attributes of that same object, so what is recorded is what ran. ``from_record``
turns a recorded dict back into the dataclass; ``with_overrides`` changes some settings (nested ones by a nested
dict) and checks every name.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

__all__ = ["SplitShares", "from_record", "with_overrides"]

T = typing.TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SplitShares:
    """Share of a zoo's models in each split; a model's split is drawn from one uniform number (``split_for``)."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2

    def split_for(self, u: float) -> str:
        """The split whose cumulative share (train, val, test in this order) first exceeds ``u`` ∈ [0, 1)."""
        total = 0.0
        for name, share in dataclasses.asdict(self).items():
            total += share
            if u < total:
                return name
        return "test"


def _value(hint, value):
    """``value`` as the field type ``hint`` wants it: a dict → nested dataclass, a list → tuple."""
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_record(hint, value)
    if typing.get_origin(hint) is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value


def from_record(cls: type[T], record: Mapping) -> T:
    """The settings dataclass ``cls`` from a dict such as ``dataclasses.asdict`` (or ``zoo.json``) gives.

    Every field must be present and no other key; nested dataclass fields are built from nested dicts, lists
    become tuples. ``from_record(type(s), dataclasses.asdict(s)) == s``.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{cls.__name__} settings must be a mapping of names to values, got {type(record).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in record if k not in names]
    missing = [n for n in names if n not in record]
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: unknown settings {unknown}, missing settings {missing}; "
                         f"the settings are {names}")
    hints = typing.get_type_hints(cls)
    return cls(**{n: _value(hints[n], record[n]) for n in names})


def _merge(base: dict, overrides: Mapping) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if key not in out:
            raise ValueError(f"unknown setting {key!r}; the settings are {list(base)}")
        out[key] = _merge(out[key], value) if isinstance(out[key], dict) and isinstance(value, Mapping) else value
    return out


def with_overrides(settings: T, overrides: Mapping) -> T:
    """``settings`` with some fields replaced: ``{"epochs": (1, 1), "root": {"steps": 60}}`` (a nested dict
    replaces only the nested fields it names)."""
    return from_record(type(settings), _merge(dataclasses.asdict(settings), overrides))
