"""What a look produces and stores: the typed, versioned snapshot of the audit trail.

Every entry of an experiment's audit trail (``decisions.snapshot``, a JSON document) is one of:

* :class:`LookSnapshot` -- a worker's look: the :class:`Analysis` (units, SRM checks, one
  :class:`Comparison` per treatment arm and metric, the :class:`MonitorStates` the next look
  continues from), the :class:`~abkit.core.policy.Policy` it was judged by and the
  :class:`~abkit.core.decision.Decision`;
* :class:`ManualAction` -- a promotion or rollback by a person;
* :class:`StatusChange` -- create, start, pause, resume, update.

Each has ``to_dict()`` and ``from_dict()``; :func:`read_entry` tells them apart. The analysis
builds the snapshot once; the worker (its monitor state), the results service, the page and the
CLI read it back through this module, never by raw keys.

Versions (``schema_version``):

* **1** -- written before the snapshot was typed: the same fields, without ``schema_version``
  and ``experiment_key``. ``tests/fixtures/snapshots`` holds such a trail.
* **2** -- this module: adds ``schema_version``, ``experiment_key`` and the decision's ``arm``
  and ``coverage``.

Reading is lenient by design, because a stored row outlives the code that wrote it: a field
that is absent or mistyped reads as "unknown" (NaN, ``None``, an empty mapping) or as its
documented default, so an old or damaged row never breaks a page. Writing is strict: NaN and
infinities become ``null`` (JSON has neither).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from abkit.core.decision import Action, Decision
from abkit.core.documents import finite_or_none
from abkit.core.model import ExperimentStatus
from abkit.core.policy import Direction, Policy
from abkit.core.policy_document import policy_from_dict, policy_to_dict
from abkit.core.stats import GroupSequentialState, Method, MonitorState, SrmResult, TestStatus
from abkit.errors import ValidationError

SCHEMA_VERSION = 2

E = TypeVar("E", bound=StrEnum)


class Role(StrEnum):
    """What a comparison is for: the metric that decides, or one that guards."""

    PRIMARY = "primary"
    GUARDRAIL = "guardrail"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment arm against control on one metric, at one look.

    ``estimate`` and ``[ci_low, ci_high]`` are on the tested scale (``relative``: the lift as a
    fraction of the control mean). ``status`` and ``method`` are ``None`` when a stored
    document names one this version does not know.
    """

    metric: str
    role: Role
    arm: str
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    relative: bool
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    status: TestStatus | None
    method: Method | None
    alpha: float
    direction: Direction
    # primary
    minimum_effect: float = 0.0
    better: bool = False
    worse: bool = False
    boundary: float | None = None
    information_fraction: float | None = None
    # guardrail
    margin: float | None = None
    harm_p_value: float | None = None
    harmed: bool = False
    non_inferiority_p_value: float | None = None
    non_inferior: bool = False

    @property
    def ok(self) -> bool:
        return self.status is TestStatus.OK

    @property
    def shows_harm(self) -> bool:
        """Harm detected, or the point estimate already beyond the margin the bad way."""
        if self.role is not Role.GUARDRAIL or self.margin is None:
            return False
        if self.harmed:
            return True
        bad = -self.direction.sign * self.estimate
        return math.isfinite(bad) and bad > self.margin

    @property
    def guaranteed(self) -> float:
        """The effect the interval guarantees on the good side (its bound nearest to zero)."""
        sign = self.direction.sign
        return min(sign * self.ci_low, sign * self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, float):
                value = finite_or_none(value)
            doc[f.name] = value
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Comparison:
        return cls(
            metric=_str(doc.get("metric"), "?"),
            role=_member(Role, doc.get("role")) or Role.PRIMARY,
            arm=_str(doc.get("arm"), "?"),
            n_control=_int(doc.get("n_control")),
            n_treatment=_int(doc.get("n_treatment")),
            control_mean=_float(doc.get("control_mean")),
            treatment_mean=_float(doc.get("treatment_mean")),
            relative=doc.get("relative") is True,
            estimate=_float(doc.get("estimate")),
            ci_low=_float(doc.get("ci_low"), -math.inf),
            ci_high=_float(doc.get("ci_high"), math.inf),
            p_value=_float(doc.get("p_value")),
            status=_member(TestStatus, doc.get("status")),
            method=_member(Method, doc.get("method")),
            alpha=_float(doc.get("alpha")),
            direction=_member(Direction, doc.get("direction")) or Direction.INCREASE,
            minimum_effect=_float(doc.get("minimum_effect"), 0.0),
            better=doc.get("better") is True,
            worse=doc.get("worse") is True,
            boundary=_optional_float(doc.get("boundary")),
            information_fraction=_optional_float(doc.get("information_fraction")),
            margin=_optional_float(doc.get("margin")),
            harm_p_value=_optional_float(doc.get("harm_p_value")),
            harmed=doc.get("harmed") is True,
            non_inferiority_p_value=_optional_float(doc.get("non_inferiority_p_value")),
            non_inferior=doc.get("non_inferior") is True,
        )


@dataclass(frozen=True, slots=True)
class MonitorStates:
    """What the next look continues from: each sequential test's running state, keyed
    ``metric/arm`` (primary) or ``metric/arm/harm|non_inferiority|interval`` (guardrails), and
    the sequential SRM test's running p-value."""

    sequential: Mapping[str, MonitorState] = field(default_factory=dict)
    group_sequential: Mapping[str, GroupSequentialState] = field(default_factory=dict)
    srm_p_value: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitors": {
                key: {
                    "looks": s.looks,
                    "p_value": s.p_value,
                    "ci_low": finite_or_none(s.ci_low),
                    "ci_high": finite_or_none(s.ci_high),
                    "n_total": s.n_total,
                }
                for key, s in self.sequential.items()
            },
            "group_sequential": {
                key: {"fractions": list(s.fractions), "last_n": s.last_n}
                for key, s in self.group_sequential.items()
            },
            "srm_p_value": self.srm_p_value,
        }

    @classmethod
    def from_dict(cls, doc: object) -> MonitorStates:
        d = _mapping(doc)
        return cls(
            sequential={
                key: MonitorState(
                    looks=_int(m.get("looks")),
                    p_value=_float(m.get("p_value"), 1.0),
                    ci_low=_float(m.get("ci_low"), -math.inf),
                    ci_high=_float(m.get("ci_high"), math.inf),
                    n_total=_int(m.get("n_total")),
                )
                for key, m in _mappings(d.get("monitors"))
            },
            group_sequential={
                key: GroupSequentialState(
                    tuple(_float(f) for f in _list(g.get("fractions"))), _int(g.get("last_n"))
                )
                for key, g in _mappings(d.get("group_sequential"))
            },
            srm_p_value=_float(d.get("srm_p_value"), 1.0),
        )


@dataclass(frozen=True, slots=True)
class Analysis:
    """Every test of the policy at one look (``error``: the look could not be analysed)."""

    experiment_key: str
    control: str
    look: int
    at: datetime
    started_at: datetime | None
    coverage: float
    config_checksum: str
    coverage_since: datetime | None
    units: Mapping[str, int]
    weights: Mapping[str, float]
    srm: SrmResult | None
    sequential_srm: SrmResult | None
    comparisons: tuple[Comparison, ...] = ()
    state: MonitorStates = field(default_factory=MonitorStates)
    final_look: bool = False
    error: str | None = None

    @property
    def elapsed_seconds(self) -> float:
        return 0.0 if self.started_at is None else (self.at - self.started_at).total_seconds()

    def primary(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.role is Role.PRIMARY)

    def guardrails(self, arm: str | None = None) -> tuple[Comparison, ...]:
        return tuple(
            c
            for c in self.comparisons
            if c.role is Role.GUARDRAIL and (arm is None or c.arm == arm)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_key": self.experiment_key,
            "look": self.look,
            "at": self.at.isoformat(),
            "started_at": _iso(self.started_at),
            "coverage": self.coverage,
            "coverage_since": _iso(self.coverage_since),
            "config_checksum": self.config_checksum,
            "control": self.control,
            "units": dict(self.units),
            "weights": dict(self.weights),
            "srm": _srm_doc(self.srm),
            "sequential_srm": _srm_doc(self.sequential_srm),
            "comparisons": [c.to_dict() for c in self.comparisons],
            "final_look": self.final_look,
            "error": self.error,
            "state": self.state.to_dict(),
        }

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, experiment_key: str, look: int, at: datetime
    ) -> Analysis:
        """``experiment_key``, ``look`` and ``at`` are the audit row's own (schema 1 documents
        do not carry the key; hand-written ones may lack the rest)."""
        return cls(
            experiment_key=experiment_key,
            control=_str(doc.get("control")),
            look=look,
            at=_time(doc.get("at")) or at,
            started_at=_time(doc.get("started_at")),
            coverage=_float(doc.get("coverage")),
            config_checksum=_str(doc.get("config_checksum")),
            coverage_since=_time(doc.get("coverage_since")),
            units={str(k): _int(v) for k, v in _mapping(doc.get("units")).items()},
            weights={str(k): _float(v) for k, v in _mapping(doc.get("weights")).items()},
            srm=_srm(doc.get("srm")),
            sequential_srm=_srm(doc.get("sequential_srm")),
            comparisons=tuple(Comparison.from_dict(c) for c in _docs(doc.get("comparisons"))),
            state=MonitorStates.from_dict(doc.get("state")),
            final_look=doc.get("final_look") is True,
            error=_str(doc.get("error")) or None,
        )


@dataclass(frozen=True, slots=True)
class LookSnapshot:
    """A worker's look as the audit trail keeps it: the analysis, the policy it was judged by
    (``None`` if its document no longer parses) and the decision taken."""

    analysis: Analysis
    policy: Policy | None
    decision: Decision | None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        decision = None
        if self.decision is not None:
            decision = {
                "action": self.decision.action.value,
                "reasons": list(self.decision.reasons),
                "arm": self.decision.arm,
                "coverage": self.decision.coverage,
            }
        return {
            "schema_version": self.schema_version,
            **self.analysis.to_dict(),
            "policy": policy_to_dict(self.policy) if self.policy is not None else None,
            "decision": decision,
        }

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, experiment_key: str, look: int, at: datetime
    ) -> LookSnapshot:
        return cls(
            analysis=Analysis.from_dict(doc, experiment_key=experiment_key, look=look, at=at),
            policy=_policy(doc.get("policy")),
            decision=_decision(doc.get("decision")),
            schema_version=_int(doc.get("schema_version")) or 1,
        )


@dataclass(frozen=True, slots=True)
class ManualAction:
    """A promotion or rollback a person asked for (the reason is the audit row's own)."""

    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "manual": True,
            "decision": {"action": self.action.value},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ManualAction | None:
        action = _member(Action, _mapping(doc.get("decision")).get("action"))
        return cls(action) if action is not None else None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """An experiment saved or started, paused, resumed: its revision and status after."""

    revision: int
    status: ExperimentStatus | None

    def to_dict(self) -> dict[str, Any]:
        status = self.status.value if self.status is not None else None
        return {"schema_version": SCHEMA_VERSION, "revision": self.revision, "status": status}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StatusChange:
        return cls(_int(doc.get("revision")), _member(ExperimentStatus, doc.get("status")))


Entry = LookSnapshot | ManualAction | StatusChange


def read_entry(
    doc: Mapping[str, Any], *, experiment_key: str, look: int | None, at: datetime
) -> Entry | None:
    """The typed form of one audit row's snapshot; ``None`` for a document of no known kind.

    A row with a look number whose document has comparisons is a look; ``manual: true`` marks a
    person's promotion or rollback; ``status`` a status change.
    """
    if look is not None and isinstance(doc.get("comparisons"), list):
        return LookSnapshot.from_dict(doc, experiment_key=experiment_key, look=look, at=at)
    if doc.get("manual") is True:
        return ManualAction.from_dict(doc)
    if "status" in doc:
        return StatusChange.from_dict(doc)
    return None


def read_look(
    doc: Mapping[str, Any], *, experiment_key: str, look: int | None, at: datetime
) -> LookSnapshot | None:
    """The look snapshot of an audit row, or ``None`` if the row is not a look."""
    entry = read_entry(doc, experiment_key=experiment_key, look=look, at=at)
    return entry if isinstance(entry, LookSnapshot) else None


# -- writing and reading the parts ---------------------------------------------------------------


def _srm_doc(result: SrmResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "p_value": finite_or_none(result.p_value),
        "mismatch": result.mismatch,
        "status": result.status.value,
        "statistic": finite_or_none(result.statistic),
        "e_value": finite_or_none(result.e_value),
        "expected": [finite_or_none(e) for e in result.expected],
    }


def _srm(doc: object) -> SrmResult | None:
    if not isinstance(doc, Mapping):
        return None
    e_value = doc.get("e_value")
    return SrmResult(
        p_value=_float(doc.get("p_value")),
        mismatch=doc.get("mismatch") is True,
        status=_member(TestStatus, doc.get("status")) or TestStatus.NOT_ENOUGH_DATA,
        statistic=_float(doc.get("statistic")),
        e_value=_float(e_value) if e_value is not None else None,
        expected=tuple(_float(e) for e in _list(doc.get("expected"))),
    )


def _decision(doc: object) -> Decision | None:
    """Schema 1 stored the action and the reasons; schema 2 also the arm and the coverage."""
    d = _mapping(doc)
    action = _member(Action, d.get("action"))
    if action is None:
        return None
    arm = d.get("arm")
    coverage = _optional_float(d.get("coverage"))
    reasons = tuple(str(r) for r in _list(d.get("reasons")))
    return Decision(action, reasons, arm if isinstance(arm, str) else None, coverage)


def _policy(doc: object) -> Policy | None:
    if not isinstance(doc, Mapping):
        return None
    try:
        return policy_from_dict(doc)
    except ValidationError:
        return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _float(value: object, default: float = math.nan) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _optional_float(value: object) -> float | None:
    number = _float(value)
    return None if math.isnan(number) else number


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _member(kind: type[E], value: object) -> E | None:
    try:
        return kind(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _docs(value: object) -> list[Mapping[str, Any]]:
    return [v for v in _list(value) if isinstance(v, Mapping)]


def _mappings(value: object) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(k), v) for k, v in _mapping(value).items() if isinstance(v, Mapping)]
