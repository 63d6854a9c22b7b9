"""The decision policy: when to promote the candidate model, roll back, keep looking or stop.

``decide(analysis, policy, now)`` is pure: it reads one look's
:class:`~abkit.core.analysis.Analysis` and returns a :class:`Decision` with human-readable
reasons. Precedence, first match wins:

1. **hold** -- the analysis could not be computed (store down, broken data): never act on
   missing data.
2. **rollback** (to control, for everyone) as soon as any of: sample ratio mismatch (the split
   is broken, so no comparison can be trusted); the primary metric significantly *worse* in a
   treatment arm; a guardrail significantly harmed beyond its margin (one-sided, always valid).
   Safety checks do not wait for the minimum duration.
3. **promote(arm)** when, for that arm, the primary metric's interval lies entirely on the good
   side beyond ``minimum_effect``, every guardrail is shown non-inferior (its one-sided bound is
   within the margin), the SRM check is clean, every arm has ``min_units_per_arm`` units and
   ``min_duration`` has passed. Several winners: the arm with the best guaranteed effect (the
   bound closest to the good side), each arm tested at a Bonferroni share of alpha.
4. **stop_inconclusive** (control for everyone) at ``max_duration`` -- or, in group-sequential
   mode, at the final planned look -- without a winner.
5. **ramp(coverage)** -- advance the coverage ramp one step when the current step has lasted
   ``ramp_step`` and no guardrail shows harm (no harm detected and no estimate beyond a margin).
6. **continue** otherwise, saying what it is waiting for.

Terminal decisions (promote, rollback, stop_inconclusive) conclude the experiment: they are
sticky, and the worker never looks at a concluded experiment again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from abkit.core.metrics import Metric, MetricKind, parse_duration
from abkit.errors import ValidationError

if TYPE_CHECKING:  # analysis imports this module; the reverse import is for types only
    from abkit.core.analysis import Analysis, Comparison

DEFAULT_LOOK_INTERVAL = 300
DEFAULT_MAX_DURATION = 14 * 86400
DEFAULT_MIN_UNITS_PER_ARM = 100
DEFAULT_SRM_ALPHA = 0.001


class Direction(StrEnum):
    """Which way of the metric is good."""

    INCREASE = "increase"
    DECREASE = "decrease"

    @property
    def sign(self) -> int:
        return 1 if self is Direction.INCREASE else -1


class Mode(StrEnum):
    ALWAYS_VALID = "always_valid"
    GROUP_SEQUENTIAL = "group_sequential"


class Action(StrEnum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOLD = "hold"
    STOP_INCONCLUSIVE = "stop_inconclusive"
    RAMP = "ramp"

    @property
    def terminal(self) -> bool:
        return self in (Action.PROMOTE, Action.ROLLBACK, Action.STOP_INCONCLUSIVE)


@dataclass(frozen=True, slots=True)
class PrimaryMetric:
    metric: Metric
    direction: Direction = Direction.INCREASE
    minimum_effect: float = 0.0
    """Smallest effect worth shipping, on the scale of ``relative`` (absolute or lift)."""
    relative: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.minimum_effect) and self.minimum_effect >= 0):
            raise ValidationError(
                "policy.primary.minimum_effect",
                f"must be a finite number >= 0 (a size, in the good direction), "
                f"got {self.minimum_effect!r}",
            )


@dataclass(frozen=True, slots=True)
class Guardrail:
    metric: Metric
    direction: Direction
    margin: float
    """Tolerated harm (> 0): absolute, or a fraction of the control mean when ``relative``."""
    relative: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    primary: PrimaryMetric
    guardrails: tuple[Guardrail, ...] = ()
    alpha: float = 0.05
    mode: Mode = Mode.ALWAYS_VALID
    max_units: int | None = None
    """Planned total units (all arms). Required for group-sequential mode; tunes the
    always-valid test's ``n_star`` otherwise."""
    spending: str | float = "obf"
    min_units_per_arm: int = DEFAULT_MIN_UNITS_PER_ARM
    min_duration_seconds: int = 0
    max_duration_seconds: int = DEFAULT_MAX_DURATION
    look_interval_seconds: int = DEFAULT_LOOK_INTERVAL
    cuped_lookback_seconds: int | None = None
    ramp: tuple[float, ...] = ()
    ramp_step_seconds: int = 3600
    srm_alpha: float = DEFAULT_SRM_ALPHA
    webhook: str | None = None

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (self.primary.metric, *(g.metric for g in self.guardrails))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after one look, and why (each reason a sentence a product owner can read)."""

    action: Action
    reasons: tuple[str, ...]
    arm: str | None = None
    coverage: float | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


# -- parsing -------------------------------------------------------------------------------------

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


def _check_fields(doc: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    import difflib

    for name in doc:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValidationError(
                f"{where}.{name}", f"unknown field; {hint}allowed fields are {', '.join(allowed)}"
            )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(where, f"must be a mapping, got {type(value).__name__}")
    return value


def _number(doc: Mapping[str, Any], name: str, where: str, default: float) -> float:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{where}.{name}", f"must be a finite number, got {value!r}")
    return float(value)


def _count(doc: Mapping[str, Any], name: str, where: str, default: int | None) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{where}.{name}", f"must be a whole number >= 1, got {value!r}")
    return value


def _enum(kind: type[StrEnum], value: object, where: str) -> Any:
    try:
        return kind(str(value))
    except ValueError:
        options = ", ".join(m.value for m in kind)
        raise ValidationError(where, f"must be one of {options}, got {value!r}") from None


def _metric(doc: Mapping[str, Any], where: str, cuped: int | None) -> Metric:
    if "metric" not in doc:
        raise ValidationError(f"{where}.metric", "is required (the metric's name)")
    if "kind" not in doc:
        raise ValidationError(
            f"{where}.kind", "is required: one of binary, count, continuous, ratio"
        )
    kind = _enum(MetricKind, doc["kind"], f"{where}.kind")
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


def _relative(doc: Mapping[str, Any], where: str) -> bool:
    value = doc.get("relative", False)
    if not isinstance(value, bool):
        raise ValidationError(f"{where}.relative", "must be true or false")
    return value


def policy_from_dict(doc: object, where: str = "policy") -> Policy:
    """Validate the ``policy:`` section of an experiment file."""
    d = _mapping(doc, where)
    _check_fields(d, POLICY_FIELDS, where)
    cuped_doc = d.get("cuped", False)
    if cuped_doc is True:
        cuped: int | None = 14 * 86400
    elif cuped_doc is False or cuped_doc is None:
        cuped = None
    else:
        cuped = parse_duration(cuped_doc, f"{where}.cuped")
    if "primary" not in d:
        raise ValidationError(f"{where}.primary", "is required: the metric that decides promotion")
    p = _mapping(d["primary"], f"{where}.primary")
    _check_fields(p, PRIMARY_FIELDS, f"{where}.primary")
    primary = PrimaryMetric(
        metric=_metric(p, f"{where}.primary", cuped),
        direction=_enum(Direction, p.get("direction", "increase"), f"{where}.primary.direction"),
        minimum_effect=_number(p, "minimum_effect", f"{where}.primary", 0.0),
        relative=_relative(p, f"{where}.primary"),
    )
    raw_guardrails = d.get("guardrails") or []
    if not isinstance(raw_guardrails, Sequence) or isinstance(raw_guardrails, str):
        raise ValidationError(f"{where}.guardrails", "must be a list")
    guardrails = []
    for i, raw in enumerate(raw_guardrails):
        gw = f"{where}.guardrails[{i}]"
        g = _mapping(raw, gw)
        _check_fields(g, GUARDRAIL_FIELDS, gw)
        if "direction" not in g:
            raise ValidationError(
                f"{gw}.direction", "is required: increase or decrease (the good way)"
            )
        margin = _number(g, "margin", gw, math.nan) if "margin" in g else math.nan
        if not margin > 0:
            raise ValidationError(
                f"{gw}.margin",
                "is required: the tolerated harm, a number > 0 "
                "(e.g. 0.05 with relative: true means 5 %)",
            )
        guardrails.append(
            Guardrail(
                metric=_metric(g, gw, cuped),
                direction=_enum(Direction, g["direction"], f"{gw}.direction"),
                margin=margin,
                relative=_relative(g, gw),
            )
        )
    names = [primary.metric.name, *(g.metric.name for g in guardrails)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationError(f"{where}.guardrails", f"metric {duplicates[0]!r} appears twice")
    alpha = _number(d, "alpha", where, 0.05)
    if not 0 < alpha < 0.5:
        raise ValidationError(f"{where}.alpha", f"must be between 0 and 0.5, got {alpha}")
    srm_alpha = _number(d, "srm_alpha", where, DEFAULT_SRM_ALPHA)
    if not 0 < srm_alpha < 0.5:
        raise ValidationError(f"{where}.srm_alpha", f"must be between 0 and 0.5, got {srm_alpha}")
    mode = _enum(Mode, d.get("mode", "always_valid"), f"{where}.mode")
    max_units = _count(d, "max_units", where, None)
    if mode is Mode.GROUP_SEQUENTIAL and max_units is None:
        raise ValidationError(
            f"{where}.max_units", "group_sequential needs the planned total units (max_units)"
        )
    spending = d.get("spending", "obf")
    if not (
        spending in ("obf", "pocock")
        or (isinstance(spending, int | float) and not isinstance(spending, bool) and spending > 0)
    ):
        raise ValidationError(
            f"{where}.spending", f"must be obf, pocock or a power-family rho > 0, got {spending!r}"
        )
    min_duration = (
        parse_duration(d["min_duration"], f"{where}.min_duration") if d.get("min_duration") else 0
    )
    max_duration = parse_duration(d.get("max_duration", "14d"), f"{where}.max_duration")
    if min_duration > max_duration:
        raise ValidationError(f"{where}.min_duration", "must not exceed max_duration")
    ramp = _ramp(d.get("ramp"), f"{where}.ramp")
    webhook = d.get("webhook")
    if webhook is not None and (
        not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))
    ):
        raise ValidationError(f"{where}.webhook", "must be an http:// or https:// URL")
    return Policy(
        primary=primary,
        guardrails=tuple(guardrails),
        alpha=alpha,
        mode=mode,
        max_units=max_units,
        spending=spending,
        min_units_per_arm=_count(d, "min_units_per_arm", where, DEFAULT_MIN_UNITS_PER_ARM) or 1,
        min_duration_seconds=min_duration,
        max_duration_seconds=max_duration,
        look_interval_seconds=parse_duration(
            d.get("look_interval", "5m"), f"{where}.look_interval"
        ),
        cuped_lookback_seconds=cuped,
        ramp=ramp,
        ramp_step_seconds=parse_duration(d.get("ramp_step", "1h"), f"{where}.ramp_step"),
        srm_alpha=srm_alpha,
        webhook=webhook,
    )


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


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The document form (inverse of :func:`policy_from_dict`), durations in seconds."""

    def metric_doc(m: Metric) -> dict[str, Any]:
        doc: dict[str, Any] = {"metric": m.name, "kind": m.kind.value}
        if m.event != m.name:
            doc["event"] = m.event
        if m.denominator:
            doc["denominator"] = m.denominator
        if m.window_seconds is not None:
            doc["window"] = m.window_seconds
        return doc

    doc: dict[str, Any] = {
        "primary": {
            **metric_doc(policy.primary.metric),
            "direction": policy.primary.direction.value,
            "minimum_effect": policy.primary.minimum_effect,
            "relative": policy.primary.relative,
        },
        "guardrails": [
            {
                **metric_doc(g.metric),
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


# -- deciding ------------------------------------------------------------------------------------


def _fmt(value: float, relative: bool) -> str:
    if not math.isfinite(value):
        return "-inf" if value < 0 else "+inf" if value > 0 else "n/a"
    return f"{value:+.2%}" if relative else f"{value:+.4g}"


def _interval(c: Comparison) -> str:
    low, high = _fmt(c.ci_low, c.relative), _fmt(c.ci_high, c.relative)
    return f"{_fmt(c.estimate, c.relative)} [{low}, {high}]"


def _guaranteed(c: Comparison) -> float:
    """The effect the interval guarantees on the good side (its bound nearest to zero)."""
    sign = c.direction.sign
    return min(sign * c.ci_low, sign * c.ci_high)


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def decide(analysis: Analysis, policy: Policy, now: datetime) -> Decision:
    """The decision for one look (see the module docstring for the rules and their order)."""
    control = analysis.control
    if analysis.error:
        return Decision(
            Action.HOLD,
            (f"holding, nothing changes: the look could not be analysed ({analysis.error})",),
        )
    srm = analysis.sequential_srm
    if srm is not None and srm.mismatch:
        units = ", ".join(f"{arm} {n:,}" for arm, n in analysis.units.items())
        weights = ", ".join(f"{arm} {w:g}" for arm, w in analysis.weights.items())
        return Decision(
            Action.ROLLBACK,
            (
                f"sample ratio mismatch: units {units} do not fit the weights {weights} "
                f"(sequential SRM p = {srm.p_value:.2g} < {policy.srm_alpha:g}); the split is "
                "broken, so no comparison can be trusted",
            ),
            arm=control,
        )
    primaries = analysis.primary()
    metric = policy.primary.metric.name
    empty = [c for c in primaries if c.status.value == "empty_confidence_sequence"]
    if empty:
        return Decision(
            Action.HOLD,
            tuple(
                f"{metric} in {c.arm}: the confidence sequences of successive looks no longer "
                "overlap (the effect seems to change over time); holding for a human to look"
                for c in empty
            ),
        )
    worse = [c for c in primaries if c.worse]
    if worse:
        return Decision(
            Action.ROLLBACK,
            tuple(
                f"primary metric {metric} is significantly worse in {c.arm}: {_interval(c)} "
                f"(p = {c.p_value:.2g} < {c.alpha:.3g})"
                for c in worse
            ),
            arm=control,
        )
    harmed = [g for g in analysis.guardrails() if g.harmed]
    if harmed:
        return Decision(
            Action.ROLLBACK,
            tuple(
                f"guardrail {g.metric} is harmed in {g.arm} beyond its margin of "
                f"{_fmt(g.margin or 0.0, g.relative).lstrip('+')}: {_interval(g)} "
                f"(one-sided p = {g.harm_p_value:.2g} < {g.alpha:g})"
                for g in harmed
            ),
            arm=control,
        )
    elapsed = (
        analysis.elapsed_seconds
        if analysis.started_at is None
        else ((now - analysis.started_at).total_seconds())
    )
    waiting: list[str] = []
    winners = []
    for c in primaries:
        if not c.better:
            continue
        blocking = [g for g in analysis.guardrails(c.arm) if not g.non_inferior]
        if blocking:
            waiting.append(
                f"{c.arm} wins on {metric} ({_interval(c)}) but non-inferiority is not shown yet "
                f"for {', '.join(f'{g.metric} ({_interval(g)})' for g in blocking)}"
            )
        else:
            winners.append(c)
    if winners:
        short = {a: n for a, n in analysis.units.items() if n < policy.min_units_per_arm}
        if short:
            waiting.append(
                f"{winners[0].arm} is winning but arms need {policy.min_units_per_arm:,} units "
                f"each ({', '.join(f'{a} has {n:,}' for a, n in short.items())})"
            )
        elif elapsed < policy.min_duration_seconds:
            waiting.append(
                f"{winners[0].arm} is winning but the minimum duration "
                f"{_duration(policy.min_duration_seconds)} is not reached ({_duration(elapsed)})"
            )
        else:
            best = max(winners, key=_guaranteed)
            reasons = [
                f"{metric} improved in {best.arm}: {_interval(best)}, beyond the minimum effect "
                f"{_fmt(policy.primary.minimum_effect, policy.primary.relative).lstrip('+')} "
                f"(p = {best.p_value:.2g} < {best.alpha:.3g})"
            ]
            guards = analysis.guardrails(best.arm)
            if guards:
                reasons.append(
                    "guardrails non-inferior: "
                    + ", ".join(f"{g.metric} {_interval(g)}" for g in guards)
                )
            if srm is not None:
                reasons.append(f"SRM clean (p = {srm.p_value:.2g})")
            if len(winners) > 1:
                reasons.append(
                    f"chosen over {', '.join(w.arm for w in winners if w is not best)} for the "
                    "larger guaranteed effect"
                )
            return Decision(Action.PROMOTE, tuple(reasons), arm=best.arm)
    if elapsed >= policy.max_duration_seconds or analysis.final_look:
        why = (
            f"the maximum duration {_duration(policy.max_duration_seconds)} is reached"
            if elapsed >= policy.max_duration_seconds
            else f"the final planned look ({policy.max_units:,} units) is reached"
        )
        return Decision(
            Action.STOP_INCONCLUSIVE,
            (
                f"{why} without a winner, so control stays",
                *(f"{metric} in {c.arm}: {_interval(c)}, p = {c.p_value:.2g}" for c in primaries),
            ),
            arm=control,
        )
    if policy.ramp and analysis.coverage < policy.ramp[-1]:
        harm = [g for g in analysis.guardrails() if g.shows_harm]
        step = next(s for s in policy.ramp if s > analysis.coverage)
        since = analysis.coverage_since or analysis.started_at
        at_step = (now - since).total_seconds() if since is not None else 0.0
        if harm:
            waiting.append(
                f"ramp held at {analysis.coverage:.0%}: "
                + ", ".join(f"guardrail {g.metric} in {g.arm} {_interval(g)}" for g in harm)
            )
        elif at_step >= policy.ramp_step_seconds:
            return Decision(
                Action.RAMP,
                (
                    f"coverage {analysis.coverage:.0%} -> {step:.0%} after "
                    f"{_duration(at_step)}: no guardrail shows harm",
                ),
                coverage=step,
            )
        else:
            waiting.append(
                f"next ramp step {step:.0%} after {_duration(policy.ramp_step_seconds)} at "
                f"{analysis.coverage:.0%} ({_duration(at_step)} so far)"
            )
    for c in primaries:
        if c.status.value != "ok":
            waiting.append(f"{metric} in {c.arm}: not enough data yet ({c.status.value})")
        elif not c.better:
            waiting.append(
                f"{metric} in {c.arm}: {_interval(c)}, p = {c.p_value:.2g}; not conclusive yet"
            )
    return Decision(Action.CONTINUE, tuple(waiting) or ("collecting data",))
