"""The request limits: the cheap common-case checks agree with the full ones, and the C twin of
the unit-and-attributes check (abkit/core/_speedups.c) agrees with its Python reference."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core.limits import (
    MAX_ATTRIBUTE_STRING_BYTES,
    MAX_ATTRIBUTES,
    MAX_UNIT_ID_BYTES,
    check_attributes,
    check_unit_id,
    plain_request,
    plain_request_reference,
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


unit_ids = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x1F, max_codepoint=0x80), max_size=260),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)
ascii_names = st.text(alphabet=st.characters(min_codepoint=0x1F, max_codepoint=0x80), max_size=70)
plain_maps = st.dictionaries(
    st.one_of(ascii_names, st.integers()),
    st.one_of(
        values,
        st.integers(min_value=-(2**53) - 2, max_value=2**53 + 2),
        st.text(max_size=MAX_ATTRIBUTE_STRING_BYTES // 4 + 2),
    ),
    max_size=MAX_ATTRIBUTES + 2,
)


class _Str(str):
    pass


class _Int(int):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


def test_the_suite_runs_the_native_check() -> None:
    assert plain_request is not plain_request_reference, "abkit.core._speedups is not built"


@given(unit_ids, st.one_of(st.none(), plain_maps))
def test_the_native_check_answers_as_its_reference(unit_id: object, attributes: object) -> None:
    assert plain_request(unit_id, attributes) == plain_request_reference(unit_id, attributes)


@given(unit_ids, st.one_of(st.none(), plain_maps))
def test_a_plain_request_passes_the_full_checks(unit_id: object, attributes: object) -> None:
    if plain_request(unit_id, attributes):
        check_unit_id(unit_id)
        assert attributes is None or _fully_valid(attributes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("unit_id", "attributes", "plain"),
    [
        ("u-1", None, True),
        ("u-1", {}, True),
        ("u-1", {"country": "US", "v": 130, "score": 0.5, "vip": True}, True),
        ("x" * MAX_UNIT_ID_BYTES, None, True),
        ("x" * (MAX_UNIT_ID_BYTES + 1), None, False),
        ("", None, False),
        ("u\x7f", None, False),  # DEL is not printable
        ("u\x1f", None, False),
        (" ", None, True),  # a space is
        ("ü", None, False),  # not ASCII: the full check decides
        (_Str("u"), None, False),  # a subclass: the full check converts it
        ("u", _Dict(a=1), False),  # another mapping: the full check reads it
        ("u", {"n": _Int(1)}, False),
        ("u", {"n": 2**53}, True),
        ("u", {"n": -(2**53)}, True),
        ("u", {"n": 2**53 + 1}, False),
        ("u", {"n": 10**400}, False),
        ("u", {"n": math.nan}, False),
        ("u", {"n": -math.inf}, False),
        ("u", {"s": "x" * (MAX_ATTRIBUTE_STRING_BYTES // 4)}, True),
        ("u", {"s": "x" * (MAX_ATTRIBUTE_STRING_BYTES // 4 + 1)}, False),
        ("u", {"": 1}, False),
        ("u", {"a" * 65: 1}, False),
        ("u", {1: 1}, False),
        ("u", {f"k{i}": 1 for i in range(MAX_ATTRIBUTES)}, True),
        ("u", {f"k{i}": 1 for i in range(MAX_ATTRIBUTES + 1)}, False),
    ],
)
def test_plain_requests(unit_id: object, attributes: object, plain: bool) -> None:
    assert plain_request(unit_id, attributes) is plain
    assert plain_request_reference(unit_id, attributes) is plain


def test_the_native_check_obeys_the_limits_it_is_built_with() -> None:
    # limits.py passes its constants in: the C code has no copy of them.
    from abkit.core._speedups import PlainRequests

    tight = PlainRequests(
        max_unit_bytes=3, max_attributes=1, max_name_length=2, max_string_bytes=8, int_exact=10
    )
    assert tight("abc", {"ab": "xy"}) and tight("abc", {"n": -10})
    assert not tight("abcd", None)
    assert not tight("abc", {"a": 1, "b": 2})
    assert not tight("abc", {"abc": 1})
    assert not tight("abc", {"s": "xyz"})
    assert not tight("abc", {"n": 11})
    with pytest.raises(TypeError):
        tight("u")  # type: ignore[call-arg]


def test_an_int_inexact_as_a_double_takes_the_full_check() -> None:
    # The wire carries doubles: 2**53 + 1 arrives as 2**53, so the client must compare it so.
    assert plainly_valid({"n": 2**53})
    assert not plainly_valid({"n": 2**53 + 1})
    assert not plainly_valid({"n": -(2**53) - 1})
    assert check_attributes({"n": 2**53 + 1}) == {"n": 2**53 + 1}  # valid, just not plain
