"""The bounded memory of sent exposures: remembers the latest pairs, forgets the oldest."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from abkit.core.recent import RecentKeys

pairs = st.tuples(st.sampled_from(["exp-a", "exp-b", "exp-c"]), st.text(max_size=3))


def test_a_pair_is_first_once_per_experiment() -> None:
    recent = RecentKeys(100)
    assert recent.first("exp-a", "u1")
    assert not recent.first("exp-a", "u1")
    assert recent.first("exp-b", "u1")  # the same unit in another experiment is new
    assert ("exp-a", "u1") in recent and ("exp-b", "u1") in recent
    assert ("exp-c", "u1") not in recent and ("exp-a", "u2") not in recent


def test_update_remembers_what_contains_then_finds() -> None:
    recent = RecentKeys(100)
    recent.update([("exp-a", "u1"), ("exp-a", "u2")])
    assert ("exp-a", "u2") in recent
    assert not recent.first("exp-a", "u1")
    assert len(recent) == 2


@given(st.lists(pairs, max_size=200), st.integers(min_value=2, max_value=40))
def test_the_latest_half_is_remembered_and_at_most_capacity_is_held(
    sequence: list[tuple[str, str]], capacity: int
) -> None:
    recent = RecentKeys(capacity)
    distinct: list[tuple[str, str]] = []  # pairs in the order they were first (newly) added
    for experiment, unit in sequence:
        if recent.first(experiment, unit):
            distinct.append((experiment, unit))
        else:  # it was remembered, so it was added before
            assert (experiment, unit) in distinct
        assert len(recent) <= capacity
    # The latest capacity // 2 pairs added are all still known.
    for pair in distinct[-(capacity // 2) :]:
        assert pair in recent
