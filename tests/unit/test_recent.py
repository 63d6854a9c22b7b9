"""The bounded memory of sent exposures: exact, bounded, the latest pairs remembered -- the
contract both implementations keep (abkit.core.recent), and what each promises beyond it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core import _speedups
from abkit.core.recent import RecentMemory, TwoGenerations, recent_keys

pairs = st.tuples(st.sampled_from(["exp-a", "exp-b", "exp-c"]), st.text(max_size=3))

IMPLEMENTATIONS: dict[str, Callable[[int], RecentMemory]] = {
    "native": _speedups.RecentKeys,
    "python": TwoGenerations,
}
implementations = pytest.mark.parametrize(
    "make", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys()
)


def test_the_native_memory_is_the_one_in_use() -> None:
    assert isinstance(recent_keys(10), _speedups.RecentKeys)


@implementations
def test_a_pair_is_first_once_per_experiment(make: Callable[[int], RecentMemory]) -> None:
    recent = make(100)
    assert recent.first("exp-a", "u1")
    assert not recent.first("exp-a", "u1")
    assert recent.first("exp-b", "u1")  # the same unit in another experiment is new
    assert ("exp-a", "u1") in recent and ("exp-b", "u1") in recent
    assert ("exp-c", "u1") not in recent and ("exp-a", "u2") not in recent


@implementations
def test_update_remembers_what_contains_then_finds(make: Callable[[int], RecentMemory]) -> None:
    recent = make(100)
    recent.update([("exp-a", "u1"), ("exp-a", "u2"), ("exp-a", "u1")])
    assert ("exp-a", "u2") in recent
    assert not recent.first("exp-a", "u1")
    assert len(recent) == 2  # a pair given twice counts once


@implementations
def test_equal_strings_are_the_same_pair(make: Callable[[int], RecentMemory]) -> None:
    recent = make(100)
    unit = "".join(["u", "1"])  # equal to "u1", another object
    assert recent.first("exp-a", "u1")
    assert not recent.first("".join(["exp", "-a"]), unit)

    class Name(str):
        pass

    assert not recent.first(Name("exp-a"), Name("u1"))
    assert (Name("exp-a"), "u1") in recent


@implementations
def test_what_is_not_a_pair_of_strings_is_never_remembered(
    make: Callable[[int], RecentMemory],
) -> None:
    recent = make(100)
    recent.first("exp-a", "u1")

    class Pair(tuple):  # type: ignore[type-arg]
        pass

    for key in [("exp-a",), ("exp-a", "u1", "x"), "exp-a", None, (1, 2), ["exp-a", "u1"]]:
        assert key not in recent
    assert Pair(("exp-a", "u1")) not in recent  # as the Python one: an exact tuple only


def test_the_native_memory_names_wrong_arguments() -> None:
    recent = _speedups.RecentKeys(10)
    with pytest.raises(TypeError, match="unit id must be str"):
        recent.first("exp-a", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="experiment key must be str"):
        recent.first(None, "u1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\(experiment key, unit id\) tuples"):
        recent.update([("exp-a",)])  # type: ignore[list-item]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            _speedups.RecentKeys(bad)
    with pytest.raises(MemoryError):  # a size that would overflow is refused, not wrapped
        _speedups.RecentKeys(2**60)
    with pytest.raises(ValueError, match="at least 1"):
        TwoGenerations(0)


@implementations
@given(sequence=st.lists(pairs, max_size=200), capacity=st.integers(min_value=1, max_value=40))
def test_exact_bounded_and_the_latest_pair_remembered(
    make: Callable[[int], RecentMemory], sequence: list[tuple[str, str]], capacity: int
) -> None:
    recent = make(capacity)
    added: set[tuple[str, str]] = set()
    for experiment, unit in sequence:
        if recent.first(experiment, unit):
            added.add((experiment, unit))
        else:  # exact: seen only if it was added before
            assert (experiment, unit) in added
        assert (experiment, unit) in recent
        assert len(recent) <= max(capacity, 4)


@given(st.lists(pairs, max_size=200), st.integers(min_value=2, max_value=40))
def test_two_generations_remember_the_latest_half(
    sequence: list[tuple[str, str]], capacity: int
) -> None:
    recent = TwoGenerations(capacity)
    distinct: list[tuple[str, str]] = []  # pairs in the order they were first (newly) added
    for experiment, unit in sequence:
        if recent.first(experiment, unit):
            distinct.append((experiment, unit))
    for pair in distinct[-(capacity // 2) :]:
        assert pair in recent


@given(st.lists(pairs, max_size=200), st.integers(min_value=1, max_value=40))
def test_the_native_memory_remembers_the_latest_four(
    sequence: list[tuple[str, str]], capacity: int
) -> None:
    recent = _speedups.RecentKeys(capacity)
    latest: list[tuple[str, str]] = []  # distinct pairs, most recently used last
    for pair in sequence:
        recent.first(*pair)
        if pair in latest:
            latest.remove(pair)
        latest.append(pair)
    for pair in latest[-4:]:
        assert pair in recent


def test_the_native_memory_keeps_most_of_the_latest_half() -> None:
    # 4-way buckets, capacity / 4 of them: a pair is pushed out once 4 later pairs landed in its
    # bucket. Of the latest capacity / 2, a pair with k later arrivals survives with probability
    # P(Poisson(2 k / capacity) <= 3): about 96 % on average over the half, 100 % for the newest.
    capacity = 100_000
    recent = _speedups.RecentKeys(capacity)
    units = [f"unit-{i}" for i in range(capacity // 2)]
    assert all(recent.first("exp-a", u) for u in units)
    kept = [("exp-a", u) in recent for u in units]
    assert sum(kept) / len(kept) > 0.93
    assert sum(kept[-5000:]) / 5000 > 0.995
    assert len(recent) <= capacity


def test_the_native_memory_starts_afresh_past_65535_experiments() -> None:
    recent = _speedups.RecentKeys(1000)
    assert recent.first("exp-0", "u")
    for i in range(1, 65_535):
        recent.first(f"exp-{i}", "u")
    assert recent.first("exp-65535", "u")  # the 65,536th: the memory starts afresh
    assert len(recent) == 1 and ("exp-65535", "u") in recent
    assert recent.first("exp-0", "u")  # forgotten, so its exposure is logged again
