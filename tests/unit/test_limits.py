"""The request limits: the cheap common-case check of attributes agrees with the full one."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core.limits import (
    MAX_ATTRIBUTE_STRING_BYTES,
    PlainNames,
    check_attributes,
    plainly_valid,
)
from abkit.errors import ValidationError

values = st.one_of(
    st.text(max_size=400),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.binary(max_size=4),
)
names = st.one_of(st.text(max_size=70), st.integers())
attribute_maps = st.dictionaries(names, values, max_size=70)


def _fully_valid(attributes: dict[object, object]) -> bool:
    try:
        check_attributes(attributes, "attributes")  # type: ignore[arg-type]
    except (ValidationError, TypeError):
        return False
    return True


@given(attribute_maps)
def test_the_fast_path_never_accepts_what_the_full_check_refuses(attributes: dict) -> None:  # type: ignore[type-arg]
    if plainly_valid(attributes):
        assert _fully_valid(attributes)


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"n": math.nan}, "attributes['n']"),
        ({"n": math.inf}, "attributes['n']"),
        ({"s": "x" * (MAX_ATTRIBUTE_STRING_BYTES + 1)}, "attributes['s']"),
        ({"s": "é" * (MAX_ATTRIBUTE_STRING_BYTES // 2 + 1)}, "attributes['s']"),
        ({"": "x"}, "attributes['']"),
        ({"a\nb": "x"}, "attributes['a\\nb']"),
        ({f"k{i}": 1 for i in range(65)}, "attributes"),
        ({"o": object()}, "attributes['o']"),
        ({"big": 10**400}, "attributes['big']"),
    ],
)
def test_invalid_attributes_are_named(attributes: dict, field: str) -> None:  # type: ignore[type-arg]
    assert not plainly_valid(attributes)
    with pytest.raises(ValidationError) as info:
        check_attributes(attributes)
    assert info.value.field == field


def test_common_attributes_take_the_fast_path() -> None:
    attributes = {"country": "US", "app_version": 130, "score": 0.5, "vip": True}
    assert plainly_valid(attributes)
    assert check_attributes(attributes) is attributes


@given(st.lists(attribute_maps, max_size=6))
def test_remembering_plain_names_changes_no_answer(maps: list[dict]) -> None:  # type: ignore[type-arg]
    remembered = PlainNames(limit=8)
    for attributes in maps + maps:  # each map asked twice: the second time from memory
        assert remembered.plainly_valid(attributes) == plainly_valid(attributes)


def test_remembered_names_are_bounded_and_only_plain_ones() -> None:
    remembered = PlainNames(limit=3)
    assert remembered.plainly_valid({"country": "US", "app_version": 130})
    assert not remembered.plainly_valid({"country": "US", "a\nb": 1})
    assert remembered.plainly_valid({"x": 1, "y": 2})  # plain, but past the bound: not kept
    assert remembered._names == {"country", "app_version"}
    # A remembered name does not vouch for its value.
    assert not remembered.plainly_valid({"country": math.nan})
    assert not remembered.plainly_valid({"country": "x" * (MAX_ATTRIBUTE_STRING_BYTES + 1)})


def test_an_int_inexact_as_a_double_takes_the_full_check() -> None:
    # The wire carries doubles: 2**53 + 1 arrives as 2**53, so the client must compare it so.
    assert plainly_valid({"n": 2**53})
    assert not plainly_valid({"n": 2**53 + 1})
    assert not plainly_valid({"n": -(2**53) - 1})
    assert check_attributes({"n": 2**53 + 1}) == {"n": 2**53 + 1}  # valid, just not plain
