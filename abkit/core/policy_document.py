"""The ``policy:`` section of an experiment file, and the document form of a stored policy.

:func:`policy_from_dict` validates a document (YAML or JSON, as parsed) into a
:class:`~abkit.core.policy.Policy`, naming the field and the fix on every mistake;
:func:`policy_to_dict` is its inverse (durations in seconds), the form the store keeps and a
look's snapshot carries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from abkit.core.documents import check_fields, choice, flag, mapping, number, whole_number
from abkit.core.metrics import Metric, MetricKind, parse_duration
from abkit.core.policy import (
    DEFAULT_MIN_UNITS_PER_ARM,
    DEFAULT_SRM_ALPHA,
    Direction,
    Guardrail,
    Mode,
    Policy,
    PrimaryMetric,
)
from abkit.errors import ValidationError

POLICY_FIELDS = (
    "primary", "guardrails", "alpha", "mode", "max_units", "spending", "min_units_per_arm",
    "min_duration", "max_duration", "look_interval", "cuped", "ramp", "ramp_step", "srm_alpha",
    "webhook",
)  # fmt: skip
PRIMARY_FIELDS = (
    "metric", "kind", "event", "denominator", "window", "direction", "minimum_effect", "relative",
)  # fmt: skip
GUARDRAIL_FIELDS = (
    "metric", "kind", "event", "denominator", "window", "direction", "margin", "relative",
)  # fmt: skip
CUPED_DEFAULT_LOOKBACK = 14 * 86400
"""``cuped: true`` means the 14 days before each unit's first exposure."""


def policy_from_dict(doc: object, where: str = "policy") -> Policy:
    """Validate the ``policy:`` section of an experiment file."""
    d = mapping(doc, where)
    check_fields(d, POLICY_FIELDS, where)
    cuped = _cuped(d.get("cuped", False), f"{where}.cuped")
    primary = _primary(d, where, cuped)
    guardrails = _guardrails(d.get("guardrails") or [], f"{where}.guardrails", cuped)
    names = [primary.metric.name, *(g.metric.name for g in guardrails)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationError(f"{where}.guardrails", f"metric {duplicates[0]!r} appears twice")
    mode = choice(Mode, d.get("mode", "always_valid"), f"{where}.mode")
    max_units = whole_number(d, "max_units", where, None)
    if mode is Mode.GROUP_SEQUENTIAL and max_units is None:
        raise ValidationError(
            f"{where}.max_units", "group_sequential needs the planned total units (max_units)"
        )
    min_duration = (
        parse_duration(d["min_duration"], f"{where}.min_duration") if d.get("min_duration") else 0
    )
    max_duration = parse_duration(d.get("max_duration", "14d"), f"{where}.max_duration")
    if min_duration > max_duration:
        raise ValidationError(f"{where}.min_duration", "must not exceed max_duration")
    return Policy(
        primary=primary,
        guardrails=guardrails,
        alpha=_level(d, "alpha", where, 0.05),
        mode=mode,
        max_units=max_units,
        spending=_spending(d.get("spending", "obf"), f"{where}.spending"),
        min_units_per_arm=whole_number(d, "min_units_per_arm", where, DEFAULT_MIN_UNITS_PER_ARM)
        or 1,
        min_duration_seconds=min_duration,
        max_duration_seconds=max_duration,
        look_interval_seconds=parse_duration(
            d.get("look_interval", "5m"), f"{where}.look_interval"
        ),
        cuped_lookback_seconds=cuped,
        ramp=_ramp(d.get("ramp"), f"{where}.ramp"),
        ramp_step_seconds=parse_duration(d.get("ramp_step", "1h"), f"{where}.ramp_step"),
        srm_alpha=_level(d, "srm_alpha", where, DEFAULT_SRM_ALPHA),
        webhook=_webhook(d.get("webhook"), f"{where}.webhook"),
    )


def read_policy(doc: Mapping[str, Any] | None) -> tuple[Policy | None, str | None]:
    """A stored policy document as ``(policy, None)``, or ``(None, why)`` when it no longer
    validates (written by another version, or edited by hand): one bad row must not stop the
    store from listing every experiment."""
    if doc is None:
        return None, None
    try:
        return policy_from_dict(doc), None
    except ValidationError as exc:
        return None, str(exc)


def _cuped(value: object, where: str) -> int | None:
    if value is True:
        return CUPED_DEFAULT_LOOKBACK
    if value is False or value is None:
        return None
    return parse_duration(value, where)


def _primary(d: Mapping[str, Any], where: str, cuped: int | None) -> PrimaryMetric:
    if "primary" not in d:
        raise ValidationError(f"{where}.primary", "is required: the metric that decides promotion")
    pw = f"{where}.primary"
    p = mapping(d["primary"], pw)
    check_fields(p, PRIMARY_FIELDS, pw)
    return PrimaryMetric(
        metric=_metric(p, pw, cuped),
        direction=choice(Direction, p.get("direction", "increase"), f"{pw}.direction"),
        minimum_effect=number(p, "minimum_effect", pw, 0.0),
        relative=flag(p, "relative", pw),
    )


def _guardrails(value: object, where: str, cuped: int | None) -> tuple[Guardrail, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValidationError(where, "must be a list")
    guardrails = []
    for i, raw in enumerate(value):
        gw = f"{where}[{i}]"
        g = mapping(raw, gw)
        check_fields(g, GUARDRAIL_FIELDS, gw)
        if "direction" not in g:
            raise ValidationError(
                f"{gw}.direction", "is required: increase or decrease (the good way)"
            )
        margin = number(g, "margin", gw, math.nan) if "margin" in g else math.nan
        if not margin > 0:
            raise ValidationError(
                f"{gw}.margin",
                "is required: the tolerated harm, a number > 0 "
                "(e.g. 0.05 with relative: true means 5 %)",
            )
        guardrails.append(
            Guardrail(
                metric=_metric(g, gw, cuped),
                direction=choice(Direction, g["direction"], f"{gw}.direction"),
                margin=margin,
                relative=flag(g, "relative", gw),
            )
        )
    return tuple(guardrails)


def _metric(doc: Mapping[str, Any], where: str, cuped: int | None) -> Metric:
    if "metric" not in doc:
        raise ValidationError(f"{where}.metric", "is required (the metric's name)")
    if "kind" not in doc:
        raise ValidationError(
            f"{where}.kind", "is required: one of binary, count, continuous, ratio"
        )
    kind = choice(MetricKind, doc["kind"], f"{where}.kind")
    window = doc.get("window")
    try:
        return Metric(
            name=doc["metric"],
            kind=kind,
            event=doc.get("event") or "",
            denominator=doc.get("denominator") or "",
            window_seconds=None if window is None else parse_duration(window, f"{where}.window"),
            cuped_lookback_seconds=None if kind is MetricKind.RATIO else cuped,
        )
    except ValidationError as exc:
        field_name = "metric" if exc.field == "name" else exc.field
        raise ValidationError(f"{where}.{field_name}", exc.message) from None


def _level(d: Mapping[str, Any], name: str, where: str, default: float) -> float:
    value = number(d, name, where, default)
    if not 0 < value < 0.5:
        raise ValidationError(f"{where}.{name}", f"must be between 0 and 0.5, got {value}")
    return value


def _spending(value: object, where: str) -> str | float:
    if value in ("obf", "pocock"):
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return value
    raise ValidationError(where, f"must be obf, pocock or a power-family rho > 0, got {value!r}")


def _webhook(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValidationError(where, "must be an http:// or https:// URL")
    return value


def _ramp(value: object, where: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValidationError(where, "must be a list of coverages such as [0.05, 0.2, 1.0]")
    steps: list[float] = []
    for i, step in enumerate(value):
        if isinstance(step, bool) or not isinstance(step, int | float) or not 0 < step <= 1:
            raise ValidationError(f"{where}[{i}]", f"must be a coverage in (0, 1], got {step!r}")
        if steps and step <= steps[-1]:
            raise ValidationError(f"{where}[{i}]", "steps must increase")
        steps.append(float(step))
    return tuple(steps)


def _metric_doc(m: Metric) -> dict[str, Any]:
    doc: dict[str, Any] = {"metric": m.name, "kind": m.kind.value}
    if m.event != m.name:
        doc["event"] = m.event
    if m.denominator:
        doc["denominator"] = m.denominator
    if m.window_seconds is not None:
        doc["window"] = m.window_seconds
    return doc


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The document form (inverse of :func:`policy_from_dict`), durations in seconds."""
    doc: dict[str, Any] = {
        "primary": {
            **_metric_doc(policy.primary.metric),
            "direction": policy.primary.direction.value,
            "minimum_effect": policy.primary.minimum_effect,
            "relative": policy.primary.relative,
        },
        "guardrails": [
            {
                **_metric_doc(g.metric),
                "direction": g.direction.value,
                "margin": g.margin,
                "relative": g.relative,
            }
            for g in policy.guardrails
        ],
        "alpha": policy.alpha,
        "mode": policy.mode.value,
        "spending": policy.spending,
        "min_units_per_arm": policy.min_units_per_arm,
        "max_duration": policy.max_duration_seconds,
        "look_interval": policy.look_interval_seconds,
        "ramp_step": policy.ramp_step_seconds,
        "srm_alpha": policy.srm_alpha,
        "cuped": policy.cuped_lookback_seconds if policy.cuped_lookback_seconds else False,
    }
    if policy.max_units is not None:
        doc["max_units"] = policy.max_units
    if policy.min_duration_seconds:
        doc["min_duration"] = policy.min_duration_seconds
    if policy.ramp:
        doc["ramp"] = list(policy.ramp)
    if policy.webhook:
        doc["webhook"] = policy.webhook
    return doc
