"""Types of the C extension abkit/core/_speedups.c (abkit.core.hashing, recent, limits, plain)."""

from collections.abc import Callable, Iterable
from typing import Any, final

@final
class Seeded:
    """The SHA-256 state after ``utf8(seed + ":")``; called with a unit id, its digest."""

    def __init__(self, seed: str) -> None: ...
    def __call__(self, unit_id: str, /) -> bytes: ...

@final
class RecentKeys:
    """A bounded, exact memory of recently seen ``(experiment_key, unit_id)`` pairs."""

    def __init__(self, capacity: int) -> None: ...
    def first(self, experiment: str, unit: str, /) -> bool: ...
    def update(self, keys: Iterable[tuple[str, str]], /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...

@final
class PlainRequests:
    """``(unit_id, attributes) -> bool``: the common case that needs no further check."""

    def __init__(
        self,
        *,
        max_unit_bytes: int,
        max_attributes: int,
        max_name_length: int,
        max_string_bytes: int,
        int_exact: int,
    ) -> None: ...
    def __call__(self, unit_id: object, attributes: object, /) -> bool: ...

def read_plain_unit(data: bytes, max_unit_bytes: int, /) -> tuple[str, tuple[str, ...]] | None:
    """The unit id and keys of a plain serialized ``AssignRequest``, or None."""

def read_plain_batch(
    data: bytes, max_unit_bytes: int, /
) -> tuple[list[str], tuple[str, ...]] | None:
    """The unit ids and shared keys of a plain serialized ``AssignBatchRequest``, or None."""

def assign_plain(
    units: list[str],
    plan: tuple[Any, ...],
    logged: RecentKeys,
    experiment_key: str,
    tail: str,
    stored_id: Callable[[str], str] | None,
    /,
) -> tuple[list[Any], str, list[str]]:
    """Every unit's answer from the plan, the exposure rows not in ``logged``, their units."""
