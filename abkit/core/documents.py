"""Reading plain documents (parsed YAML/JSON) into values: the field checks every parser shares.

Experiment files (:mod:`abkit.core.spec`) and policies (:mod:`abkit.core.policy_document`)
refuse what they do not know and name the offending field by its path in the document
(``arms[1].weigth``, ``policy.guardrails[0].margin``), with the fix in the message. JSON has no
NaN or infinity, so :func:`finite_or_none` is how a float goes into a stored document.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from abkit.errors import ValidationError

E = TypeVar("E", bound=StrEnum)


def path(where: str, name: str) -> str:
    """``where.name``, or just ``name`` at the top of a document."""
    return f"{where}.{name}" if where else name


def mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(where, f"must be a mapping, got {type(value).__name__}")
    return value


def check_fields(
    doc: Mapping[str, Any], allowed: Sequence[str], where: str, required: Sequence[str] = ()
) -> None:
    """Refuse unknown fields (suggesting the closest allowed one) and missing required ones."""
    for name in doc:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValidationError(
                path(where, str(name)),
                f"unknown field; {hint}allowed fields are {', '.join(allowed)}",
            )
    for name in required:
        if name not in doc:
            raise ValidationError(path(where, name), "is required")


def string(doc: Mapping[str, Any], name: str, where: str, default: str = "") -> str:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValidationError(where, f"must be a string, got {value!r}")
    return value


def number(doc: Mapping[str, Any], name: str, where: str, default: float) -> float:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(path(where, name), f"must be a finite number, got {value!r}")
    return float(value)


def whole_number(doc: Mapping[str, Any], name: str, where: str, default: int | None) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(path(where, name), f"must be a whole number >= 1, got {value!r}")
    return value


def flag(doc: Mapping[str, Any], name: str, where: str, default: bool = False) -> bool:
    value = doc.get(name, default)
    if not isinstance(value, bool):
        raise ValidationError(path(where, name), "must be true or false")
    return value


def choice(kind: type[E], value: object, where: str) -> E:
    """``value`` as a member of the enum ``kind``; the error lists the members."""
    try:
        return kind(str(value))
    except ValueError:
        options = ", ".join(m.value for m in kind)
        raise ValidationError(where, f"must be one of {options}, got {value!r}") from None


def finite_or_none(value: float | None) -> float | None:
    """A float for a JSON document: JSON has no NaN or infinity (and PostgreSQL's jsonb refuses
    them), so an unknown value or an unbounded interval end is ``null``."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
