"""The decision policy as a value: which metric decides, which guard, how sure, how long.

An experiment's policy is parsed once, at the edge where its document arrives
(:func:`abkit.core.policy_document.policy_from_dict`), and travels as this frozen value: the
store returns it, the worker analyses and decides with it (:mod:`abkit.core.analysis`,
:mod:`abkit.core.rules`), the results page reads it back from the look's snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from abkit.core.metrics import Metric
from abkit.errors import ValidationError

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
        """+1 when up is good, -1 when down is good: ``sign * effect`` is the good-way effect."""
        return 1 if self is Direction.INCREASE else -1


class Mode(StrEnum):
    ALWAYS_VALID = "always_valid"
    GROUP_SEQUENTIAL = "group_sequential"


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

    def metric(self, name: str) -> Metric | None:
        """The primary or guardrail metric called ``name``."""
        return next((m for m in self.metrics if m.name == name), None)
