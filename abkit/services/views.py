"""The results as people and programs read them: an experiment as of its latest look.

:class:`ExperimentResults` is what the results page, the JSON/CSV API and ``abkit results``
show. It is built by :mod:`abkit.services.results` from the typed look snapshots
(:mod:`abkit.core.snapshot`) and formatted by :mod:`abkit.report`; nothing here is recomputed,
so the page shows exactly what the worker decided on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from abkit.core.decision import Action
from abkit.core.metrics import MetricKind
from abkit.core.model import ExperimentStatus
from abkit.core.policy import Direction, Policy
from abkit.core.snapshot import Role
from abkit.core.stats import Method, TestStatus


@dataclass(frozen=True, slots=True)
class ScaledEffect:
    """An effect and its interval on one scale, absolute or relative (``-inf``/``inf``:
    unbounded). ``exact`` is False when converted from the tested scale with the control mean
    (treated as known)."""

    value: float
    low: float
    high: float
    exact: bool


@dataclass(frozen=True, slots=True)
class ComparisonView:
    """One treatment arm against control on one metric, at the latest look, on both scales."""

    metric: str
    role: Role
    arm: str
    kind: MetricKind | None
    direction: Direction
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    tested_relative: bool
    absolute: ScaledEffect
    relative: ScaledEffect
    p_value: float
    alpha: float
    status: TestStatus | None
    method: Method | None
    boundary: float | None
    information_fraction: float | None
    minimum_effect: float
    margin: float | None
    better: bool
    worse: bool
    harmed: bool
    non_inferior: bool
    harm_p_value: float | None
    non_inferiority_p_value: float | None

    @property
    def tested(self) -> ScaledEffect:
        """The effect on the scale the worker tested (the chart's scale)."""
        return self.relative if self.tested_relative else self.absolute

    @property
    def ok(self) -> bool:
        return self.status is TestStatus.OK


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    look: int
    at: datetime
    units: int
    estimate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Series:
    """The estimate and confidence sequence of one comparison over the looks (tested scale);
    ``latest`` carries the metric, arm, direction, minimum effect and margin."""

    latest: ComparisonView
    points: tuple[SeriesPoint, ...]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One entry of the audit trail: a look's decision or a manual action. ``action`` is an
    audit action name: a look's :class:`~abkit.core.decision.Action`, or ``create``,
    ``update``, ``start``, ``pause``, ``resume``."""

    decided_at: datetime
    look: int | None
    action: str
    arm: str | None
    actor: str
    reasons: tuple[str, ...]

    @property
    def terminal(self) -> bool:
        return Action.terminal_name(self.action)


@dataclass(frozen=True, slots=True)
class SrmView:
    mismatch: bool
    status: TestStatus
    p_value: float
    sequential_p_value: float


@dataclass(frozen=True, slots=True)
class LookView:
    """The latest look: what the worker saw and decided."""

    look: int
    at: datetime
    action: str
    reasons: tuple[str, ...]
    error: str | None
    srm: SrmView | None
    min_units_per_arm: int
    alpha: float
    look_interval_seconds: int


@dataclass(frozen=True, slots=True)
class ArmView:
    key: str
    model_version: str
    weight: float
    control: bool
    units: int


@dataclass(frozen=True, slots=True)
class PendingRegistryChange:
    """A change to the external model registry (MLflow aliases) that a decision made and that is
    not done yet: the outbox retries it until it is."""

    experiment_key: str
    decision_id: int
    action: str
    description: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    """An experiment as of its latest look: config, numbers, chart series and audit trail."""

    key: str
    name: str
    description: str
    model: str
    status: ExperimentStatus
    rollout_arm: str | None
    arms: tuple[ArmView, ...]
    started_at: datetime | None
    concluded_at: datetime | None
    policy: Policy | None
    look: LookView | None
    comparisons: tuple[ComparisonView, ...]
    numbers_look: int | None
    """The look the comparisons come from (the latest one that could be analysed)."""
    series: tuple[Series, ...]
    timeline: tuple[TimelineEntry, ...]
    decision: TimelineEntry | None
    """The terminal decision (promote, rollback, stop) if the experiment is concluded."""
    registry_pending: tuple[PendingRegistryChange, ...] = ()
    """Registry changes (MLflow aliases) the decisions made that are not done yet."""

    def arm(self, key: str | None) -> ArmView | None:
        return next((a for a in self.arms if a.key == key), None)


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A promotion, rollback or stop: which version of a model went (or stayed) live."""

    decided_at: datetime
    model: str
    experiment_key: str
    action: str
    arm: str | None
    version: str | None
    actor: str
    reasons: tuple[str, ...]
