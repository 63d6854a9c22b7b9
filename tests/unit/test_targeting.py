from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core.targeting import compile_condition, parse_condition
from abkit.errors import ValidationError

CASES = [
    ({"attr": "country", "eq": "US"}, {"country": "US"}, True),
    ({"attr": "country", "eq": "US"}, {"country": "us"}, False),  # case-sensitive
    ({"attr": "country", "eq": "US"}, {}, False),
    ({"attr": "country", "ne": "US"}, {"country": "DE"}, True),
    ({"attr": "country", "ne": "US"}, {}, False),  # missing attribute: false, even for ne
    ({"attr": "country", "in": ["US", "CA"]}, {"country": "CA"}, True),
    ({"attr": "country", "not_in": ["US", "CA"]}, {"country": "DE"}, True),
    ({"attr": "country", "not_in": ["US", "CA"]}, {}, False),
    ({"attr": "age", "gte": 18}, {"age": 18}, True),
    ({"attr": "age", "gt": 18}, {"age": 18}, False),
    ({"attr": "age", "lt": 18}, {"age": 17.5}, True),
    ({"attr": "age", "lte": 18}, {"age": "17"}, False),  # a string is not a number
    ({"attr": "age", "gte": 1}, {"age": True}, False),  # a boolean is not a number
    ({"attr": "beta", "eq": True}, {"beta": True}, True),
    ({"attr": "beta", "eq": True}, {"beta": 1}, False),
    ({"attr": "level", "eq": 3}, {"level": 3.0}, True),
    ({"attr": "level", "in": [1, 2, 3]}, {"level": 2.0}, True),
    ({"attr": "level", "in": [1, True]}, {"level": True}, True),
    ({"attr": "level", "in": [1]}, {"level": True}, False),
    ({"attr": "beta", "exists": True}, {"beta": False}, True),
    ({"attr": "beta", "exists": False}, {}, True),
    ({"all": []}, {}, True),
    ({"any": []}, {}, False),
    ({"not": {"attr": "country", "eq": "US"}}, {}, True),
    (
        {
            "all": [
                {"attr": "country", "in": ["US"]},
                {"any": [{"attr": "age", "gte": 18}, {"attr": "vip", "eq": True}]},
            ]
        },
        {"country": "US", "age": 12, "vip": True},
        True,
    ),
    (
        {"all": [{"attr": "a", "eq": 1}, {"attr": "b", "eq": 2}, {"attr": "c", "eq": 3}]},
        {"a": 1, "b": 2, "c": 4},
        False,
    ),
]


@pytest.mark.parametrize(("spec", "attributes", "expected"), CASES)
def test_condition_semantics(
    spec: dict[str, object], attributes: dict[str, object], expected: bool
) -> None:
    condition = parse_condition(spec)
    assert condition.evaluate(attributes) is expected  # type: ignore[arg-type]
    compiled = compile_condition(condition)
    assert compiled is not None
    assert compiled(attributes) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "attributes", "expected"), CASES)
def test_round_trip_through_dict(
    spec: dict[str, object], attributes: dict[str, object], expected: bool
) -> None:
    condition = parse_condition(spec)
    assert parse_condition(condition.to_dict()) == condition


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("US", "targeting", "mapping"),
        ({"attr": "x"}, "targeting", "exactly one operator"),
        ({"attr": "x", "eq": 1, "ne": 2}, "targeting", "exactly one operator"),
        ({"attr": "x", "like": "a%"}, "targeting.like", "unknown operator"),
        ({"attr": "", "eq": 1}, "targeting.attr", "non-empty"),
        ({"attr": "x", "gt": "5"}, "targeting.gt", "compares numbers"),
        ({"attr": "x", "eq": float("nan")}, "targeting.eq", "finite"),
        ({"attr": "x", "in": "US"}, "targeting.in", "list"),
        ({"attr": "x", "in": ["US", None]}, "targeting.in[1]", "string, a number or a boolean"),
        ({"attr": "x", "exists": "yes"}, "targeting.exists", "true or false"),
        ({"all": [{"attr": "x", "eq": 1}, {"bogus": 1}]}, "targeting.all[1]", "needs 'attr'"),
        ({"all": {"attr": "x"}}, "targeting.all", "list"),
        ({"not": {"attr": "x", "eq": 1}, "attr": "y"}, "targeting", "only key"),
    ],
)
def test_invalid_conditions_name_the_field(spec: object, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_condition(spec)
    assert info.value.field == field
    assert words in info.value.message


def test_nesting_is_bounded() -> None:
    spec: dict[str, object] = {"attr": "x", "eq": 1}
    for _ in range(20):
        spec = {"not": spec}
    with pytest.raises(ValidationError, match="nest deeper"):
        parse_condition(spec)


scalars = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.floats(-5, 5))


@given(
    values=st.lists(scalars, max_size=4),
    actual=st.one_of(st.none(), scalars),
    negate=st.booleans(),
)
def test_compiled_membership_agrees_with_evaluate(
    values: list[object], actual: object, negate: bool
) -> None:
    spec = {"attr": "a", ("not_in" if negate else "in"): values}
    condition = parse_condition(spec)
    attributes = {} if actual is None else {"a": actual}
    compiled = compile_condition(condition)
    assert compiled is not None
    assert compiled(attributes) == condition.evaluate(attributes)  # type: ignore[arg-type]


attribute_names = st.sampled_from(["a", "b", "c"])
leaf_values = st.one_of(
    st.sampled_from(["US", "CA", "x", ""]), st.integers(-3, 3), st.booleans(), st.floats(-3, 3)
)
leaves = st.one_of(
    st.builds(
        lambda attr, op, value: {"attr": attr, op: value},
        attribute_names,
        st.sampled_from(["eq", "ne"]),
        leaf_values,
    ),
    st.builds(
        lambda attr, op, value: {"attr": attr, op: value},
        attribute_names,
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        st.one_of(st.integers(-3, 3), st.floats(-3, 3)),
    ),
    st.builds(
        lambda attr, op, values: {"attr": attr, op: values},
        attribute_names,
        st.sampled_from(["in", "not_in"]),
        st.lists(leaf_values, max_size=3),
    ),
    st.builds(
        lambda attr, present: {"attr": attr, "exists": present}, attribute_names, st.booleans()
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=8,
)
attribute_sets = st.dictionaries(attribute_names, leaf_values, max_size=3)


@given(tree=trees, attributes=attribute_sets)
def test_compiled_predicate_agrees_with_evaluate_on_random_trees(
    tree: dict[str, object], attributes: dict[str, object]
) -> None:
    condition = parse_condition(tree)
    compiled = compile_condition(condition)
    assert compiled is not None
    assert compiled(attributes) is condition.evaluate(attributes)  # type: ignore[arg-type]
