"""A small condition language over request attributes.

Conditions are written as plain mappings (YAML/JSON in an experiment file) and parsed into frozen
values that evaluate against the attributes sent with a request::

    {attr: country, eq: "US"}                 equality (also ``ne``)
    {attr: country, in: ["US", "CA"]}         membership (also ``not_in``)
    {attr: app_version_code, gte: 120}        numeric comparison: gt, gte, lt, lte
    {attr: beta_tester, exists: true}         presence of the attribute
    {all: [cond, ...]}                        every condition holds (and)
    {any: [cond, ...]}                        at least one holds (or)
    {not: cond}                               negation

Semantics, chosen so that a surprise never puts a unit *into* an experiment by accident:

* Attribute values are strings, finite numbers or booleans. Booleans are not numbers
  (``true`` never equals ``1``); strings are compared exactly (case-sensitive).
* A comparison on an attribute the request does not carry is **false** -- including ``ne`` and
  ``not_in``. Only ``{exists: false}`` or an explicit ``not`` matches a missing attribute.
* Numeric comparisons are false unless the attribute is a number (a string "5" is not 5).
* ``{all: []}`` is true and ``{any: []}`` is false, as in logic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from abkit.errors import ValidationError

AttributeValue = str | float | int | bool
Attributes = Mapping[str, AttributeValue]
Predicate = Callable[[Attributes], bool]

CompareOp = Literal["eq", "ne", "gt", "gte", "lt", "lte"]
_COMPARE_OPS: tuple[CompareOp, ...] = ("eq", "ne", "gt", "gte", "lt", "lte")
_NUMERIC_OPS = frozenset({"gt", "gte", "lt", "lte"})
_LEAF_OPS = frozenset({*_COMPARE_OPS, "in", "not_in", "exists"})
_MAX_DEPTH = 16


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    """Typed equality: numbers by value, booleans only with booleans, strings exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True)
class Compare:
    attr: str
    op: CompareOp
    value: AttributeValue

    def evaluate(self, attributes: Attributes) -> bool:
        if self.attr not in attributes:
            return False
        actual = attributes[self.attr]
        if self.op == "eq":
            return _same(actual, self.value)
        if self.op == "ne":
            return not _same(actual, self.value)
        if not _is_number(actual):
            return False
        a, b = float(actual), float(self.value)
        if self.op == "gt":
            return a > b
        if self.op == "gte":
            return a >= b
        if self.op == "lt":
            return a < b
        return a <= b

    def to_dict(self) -> dict[str, Any]:
        return {"attr": self.attr, self.op: self.value}


@dataclass(frozen=True, slots=True)
class Membership:
    attr: str
    values: tuple[AttributeValue, ...]
    negate: bool = False

    def evaluate(self, attributes: Attributes) -> bool:
        if self.attr not in attributes:
            return False
        actual = attributes[self.attr]
        found = any(_same(actual, v) for v in self.values)
        return found != self.negate

    def to_dict(self) -> dict[str, Any]:
        return {"attr": self.attr, ("not_in" if self.negate else "in"): list(self.values)}


@dataclass(frozen=True, slots=True)
class Exists:
    attr: str
    present: bool = True

    def evaluate(self, attributes: Attributes) -> bool:
        return (self.attr in attributes) == self.present

    def to_dict(self) -> dict[str, Any]:
        return {"attr": self.attr, "exists": self.present}


@dataclass(frozen=True, slots=True)
class All:
    conditions: tuple[Condition, ...]

    def evaluate(self, attributes: Attributes) -> bool:
        return all(c.evaluate(attributes) for c in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {"all": [c.to_dict() for c in self.conditions]}


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]

    def evaluate(self, attributes: Attributes) -> bool:
        return any(c.evaluate(attributes) for c in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {"any": [c.to_dict() for c in self.conditions]}


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition

    def evaluate(self, attributes: Attributes) -> bool:
        return not self.condition.evaluate(attributes)

    def to_dict(self) -> dict[str, Any]:
        return {"not": self.condition.to_dict()}


Condition = Compare | Membership | Exists | All | AnyOf | Not


def _scalar(value: object, field: str) -> AttributeValue:
    if isinstance(value, bool | str):
        return value
    if _is_number(value):
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ValidationError(field, f"must be a finite number, got {value!r}")
        return value  # type: ignore[return-value]
    raise ValidationError(field, f"must be a string, a number or a boolean, got {value!r}")


def parse_condition(spec: object, field: str = "targeting", _depth: int = 0) -> Condition:
    """Parse the mapping form (see the module docstring) into a :data:`Condition`.

    Raises :class:`ValidationError` naming the offending field, e.g. ``targeting.all[2].gte``.
    """
    if _depth > _MAX_DEPTH:
        raise ValidationError(field, f"conditions nest deeper than {_MAX_DEPTH} levels")
    if not isinstance(spec, Mapping):
        raise ValidationError(
            field, "must be a mapping such as {attr: country, eq: US} or {all: [...]}"
        )
    keys = set(spec)
    for combinator in ("all", "any"):
        if combinator in keys:
            if keys != {combinator}:
                raise ValidationError(field, f"'{combinator}' must be the only key of its mapping")
            items = spec[combinator]
            if not isinstance(items, Sequence) or isinstance(items, str):
                raise ValidationError(f"{field}.{combinator}", "must be a list of conditions")
            children = tuple(
                parse_condition(item, f"{field}.{combinator}[{i}]", _depth + 1)
                for i, item in enumerate(items)
            )
            return All(children) if combinator == "all" else AnyOf(children)
    if "not" in keys:
        if keys != {"not"}:
            raise ValidationError(field, "'not' must be the only key of its mapping")
        return Not(parse_condition(spec["not"], f"{field}.not", _depth + 1))
    if "attr" not in keys:
        raise ValidationError(
            field, "a condition needs 'attr' plus one operator, or one of 'all', 'any', 'not'"
        )
    attr = spec["attr"]
    if not isinstance(attr, str) or not attr:
        raise ValidationError(f"{field}.attr", "must be a non-empty attribute name")
    ops = keys - {"attr"}
    unknown = ops - _LEAF_OPS
    if unknown:
        raise ValidationError(
            f"{field}.{sorted(unknown)[0]}",
            f"unknown operator; use one of {', '.join(sorted(_LEAF_OPS))}",
        )
    if len(ops) != 1:
        raise ValidationError(field, "a condition takes exactly one operator besides 'attr'")
    (op,) = ops
    raw = spec[op]
    where = f"{field}.{op}"
    if op == "exists":
        if not isinstance(raw, bool):
            raise ValidationError(where, "must be true or false")
        return Exists(attr, raw)
    if op in ("in", "not_in"):
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise ValidationError(where, "must be a list of values")
        values = tuple(_scalar(v, f"{where}[{i}]") for i, v in enumerate(raw))
        return Membership(attr, values, negate=(op == "not_in"))
    value = _scalar(raw, where)
    if op in _NUMERIC_OPS and not _is_number(value):
        raise ValidationError(where, f"'{op}' compares numbers; got {raw!r}")
    return Compare(attr, cast(CompareOp, op), value)


def compile_condition(condition: Condition | None) -> Predicate | None:
    """Turn a condition tree into one Python function (the assignment hot path calls it).

    The tree is translated into a single boolean expression -- ``and``/``or``/``not`` over
    inlined leaf checks -- and compiled once, so evaluating ``{all: [A, B]}`` costs one call
    instead of three. Only generated names (``k0``, ``c0``, ...) appear in the source; every
    attribute name and value is bound through the namespace, never pasted into code.
    A property test holds the result equal to :meth:`evaluate` on random trees.
    """
    if condition is None:
        return None
    namespace: dict[str, Any] = {"_number": _is_number}
    expression = _expression(condition, namespace)
    source = f"def predicate(a):\n    return {expression}\n"
    exec(compile(source, "<abkit targeting>", "exec"), namespace)  # noqa: S102 -- see docstring
    predicate: Predicate = namespace["predicate"]
    return predicate


_NUMBER = "((t := type(v := a.get({key}))) is int or t is float or _number(v))"
"""``_number(a.get(key))``, bound to ``v``, with the common exact types tested inline (a call
costs more than the comparison): a bool is neither, a subclass of int or float goes to the call."""


def _constant(namespace: dict[str, Any], prefix: str, value: object) -> str:
    name = f"{prefix}{sum(1 for k in namespace if k.startswith(prefix))}"
    namespace[name] = value
    return name


def _expression(c: Condition, ns: dict[str, Any]) -> str:
    """A Python expression over ``a`` (the attributes) with the semantics of ``c.evaluate``."""
    if isinstance(c, All | AnyOf):
        if not c.conditions:
            return "True" if isinstance(c, All) else "False"
        joiner = " and " if isinstance(c, All) else " or "
        return "(" + joiner.join(_expression(x, ns) for x in c.conditions) + ")"
    if isinstance(c, Not):
        return f"(not {_expression(c.condition, ns)})"
    key = _constant(ns, "k", c.attr)
    if isinstance(c, Exists):
        return f"({key} {'in' if c.present else 'not in'} a)"
    if isinstance(c, Membership):
        if all(isinstance(v, str) for v in c.values):
            values = _constant(ns, "s", frozenset(c.values))
            found = f"(type(v := a.get({key})) is str and v in {values})"
            return f"({key} in a and not {found})" if c.negate else found
        return f"{_constant(ns, 'm', _membership_predicate(c))}(a)"
    value = c.value
    if c.op in _NUMERIC_OPS:
        bound = _constant(ns, "c", float(value))
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
        return f"({_NUMBER.format(key=key)} and v {symbol} {bound})"
    if isinstance(value, bool):
        same = f"(a.get({key}) is {value})"
    elif isinstance(value, str):
        same = f"(type(v := a.get({key})) is str and v == {_constant(ns, 'c', value)})"
    else:
        same = f"({_NUMBER.format(key=key)} and v == {_constant(ns, 'c', value)})"
    return same if c.op == "eq" else f"({key} in a and not {same})"


def _membership_predicate(c: Membership) -> Predicate:
    """Set lookups with the typed-equality rules of :func:`_same` (bool apart from numbers)."""
    attr, negate = c.attr, c.negate
    strings = frozenset(v for v in c.values if isinstance(v, str))
    numbers = frozenset(float(v) for v in c.values if _is_number(v))
    booleans = frozenset(v for v in c.values if isinstance(v, bool))
    if not numbers and not booleans:

        def strings_only(a: Attributes) -> bool:
            v = a.get(attr)
            if v is None:
                return False
            return (type(v) is str and v in strings) != negate

        return strings_only

    def check(a: Attributes) -> bool:
        v = a.get(attr)
        if v is None:
            return False
        if isinstance(v, bool):
            found = v in booleans
        elif isinstance(v, str):
            found = v in strings
        else:
            found = float(v) in numbers
        return found != negate

    return check
