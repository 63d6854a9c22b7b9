"""A bounded memory of recently seen keys (which units' exposures were already sent)."""

from __future__ import annotations

from collections.abc import Iterable


class RecentKeys:
    """A bounded set of recently seen keys: two generations, the older dropped when full.

    Remembers at least ``capacity / 2`` and at most ``capacity`` of the latest keys; forgetting
    one only costs a redundant (idempotent) write later, never a wrong answer. Not locked: set
    operations are atomic under the GIL, and the one race (two threads rotating generations at
    once) can only forget keys.
    """

    __slots__ = ("_capacity", "_current", "_previous")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(2, capacity)
        self._current: set[tuple[str, str]] = set()
        self._previous: set[tuple[str, str]] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._current or key in self._previous

    def update(self, keys: Iterable[tuple[str, str]]) -> None:
        self._current.update(keys)
        if len(self._current) >= self._capacity // 2:
            self._previous, self._current = self._current, set()

    def first(self, key: tuple[str, str]) -> bool:
        """True, and remember ``key``, unless it was seen recently (one call on a hot path)."""
        current = self._current
        if key in current or key in self._previous:
            return False
        current.add(key)
        if len(current) >= self._capacity // 2:
            self._previous, self._current = current, set()
        return True
