"""A bounded memory of recently seen (experiment, unit) pairs: whose exposures were sent.

Two implementations keep one contract (:class:`RecentMemory`, ``tests/unit/test_recent.py``):
exact -- a pair is reported seen only if it was remembered, never by a hash collision --,
bounded -- at most ``max(capacity, 4)`` pairs --, and the latest pair always remembered.
Forgetting a pair early only costs a redundant, idempotent write later.

* :class:`TwoGenerations` (Python): two generations of sets; remembers every one of the
  latest ``capacity / 2`` pairs.
* ``abkit.core._speedups.RecentKeys`` (C, when built): a set-associative table of 4-way
  buckets, one cache line each; remembers the latest 4 pairs always and each of the latest
  ``capacity / 2`` with probability at least 86 % (96 % on average). A new pair costs one
  cache miss, where the two generations cost a miss per set and the Python calls around them
  (``LocalClient.assign`` with a full memory of 200,000 pairs: about 0.3 us less a call).

:func:`recent_keys` picks the C one when it is built: the server checks every in-experiment
answer against it, ``LocalClient`` every assignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, cast

from abkit.core.native import speedups


class RecentMemory(Protocol):
    def first(self, experiment: str, unit: str, /) -> bool:
        """True, and remember the pair, unless it was seen recently."""

    def update(self, keys: Iterable[tuple[str, str]], /) -> None:
        """Remember pairs (the server: after their rows were recorded)."""

    def __contains__(self, key: object, /) -> bool: ...

    def __len__(self) -> int: ...


def recent_keys(capacity: int) -> RecentMemory:
    """A memory of ``capacity`` pairs: the C one when built, else :class:`TwoGenerations`."""
    if speedups is None:  # pragma: no cover -- the test suite requires the native build
        return TwoGenerations(capacity)
    return speedups.RecentKeys(capacity)


class TwoGenerations:
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
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._half = max(1, capacity // 2)
        self._current: dict[str, set[str]] = {}
        self._previous: dict[str, set[str]] = {}
        self._count = 0  # pairs in the current generation

    def __contains__(self, key: object, /) -> bool:
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

    def update(self, keys: Iterable[tuple[str, str]], /) -> None:
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

    def first(self, experiment: str, unit: str, /) -> bool:
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
