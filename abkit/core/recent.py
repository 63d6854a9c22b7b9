"""A bounded memory of recently seen (experiment, unit) pairs: whose exposures were sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast


class RecentKeys:
    """A bounded set of recently seen ``(experiment_key, unit_id)`` pairs: two generations, the
    older dropped when the newer holds ``capacity / 2`` pairs.

    Remembers at least ``capacity / 2`` and at most ``capacity`` of the latest pairs; forgetting
    one only costs a redundant (idempotent) write later, never a wrong answer. Each generation
    maps an experiment to the set of its units: a check is a dict and a set lookup on strings
    whose hashes are cached, with no pair built -- half the cost of a set of tuples on the
    client's hot path. Not locked: dict and set operations are atomic under the GIL, and the
    races (two threads rotating at once, a lost count) can only forget pairs or rotate late by a
    few.
    """

    __slots__ = ("_count", "_current", "_half", "_previous")

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2)
        self._current: dict[str, set[str]] = {}
        self._previous: dict[str, set[str]] = {}
        self._count = 0  # pairs in the current generation

    def __contains__(self, key: object) -> bool:
        if type(key) is not tuple or len(key) != 2:
            return False
        experiment, unit = cast(tuple[str, str], key)
        units = self._current.get(experiment)
        if units is not None and unit in units:
            return True
        units = self._previous.get(experiment)
        return units is not None and unit in units

    def __len__(self) -> int:
        return self._count + sum(len(units) for units in self._previous.values())

    def update(self, keys: Iterable[tuple[str, str]]) -> None:
        """Remember pairs (the server: after their rows were recorded)."""
        current = self._current
        added = 0
        for experiment, unit in keys:
            units = current.get(experiment)
            if units is None:
                units = current[experiment] = set()
            before = len(units)
            units.add(unit)
            added += len(units) - before  # a pair given twice counts once
        self._count += added
        if self._count >= self._half:
            self._previous, self._current, self._count = self._current, {}, 0

    def first(self, experiment: str, unit: str) -> bool:
        """True, and remember the pair, unless it was seen recently (one call on a hot path)."""
        units = self._current.get(experiment)
        if units is not None and unit in units:
            return False
        older = self._previous.get(experiment)
        if older is not None and unit in older:
            return False
        if units is None:
            units = self._current[experiment] = set()
        units.add(unit)
        self._count += 1
        if self._count >= self._half:
            self._previous, self._current, self._count = self._current, {}, 0
        return True
