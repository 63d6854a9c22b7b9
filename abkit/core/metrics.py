"""Metric definitions: how the per-unit value of a metric is built from KPI events.

For each exposed unit, only events at or after its first exposure count (and, with an attribution
window, before ``first exposure + window``). Units without events count as 0 -- they are part of
the denominator, which is what makes the estimate unbiased.

=============  ===============================================  ===========================
kind           per-unit value                                   typical use
=============  ===============================================  ===========================
``binary``     1 if the unit has any such event, else 0         conversion, retention
``count``      number of such events                            clicks, sessions
``continuous`` sum of the events' values                        revenue, watch time
``ratio``      numerator sum / denominator sum, over units      revenue per session, CTR
               (both sums per unit; the delta method needs
               their cross moment)
=============  ===============================================  ===========================

CUPED (Deng, Xu, Kohavi & Walker 2013) uses the same per-unit value computed over a lookback
window *before* the first exposure as the covariate ``X``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from abkit.core.limits import check_metric
from abkit.errors import ValidationError

DURATION_PATTERN = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_WINDOW_SECONDS = 366 * 86400


class MetricKind(StrEnum):
    BINARY = "binary"
    COUNT = "count"
    CONTINUOUS = "continuous"
    RATIO = "ratio"


def parse_duration(value: object, field: str) -> int:
    """``"7d"``, ``"24h"``, ``"90m"``, ``"30s"``, ``"2w"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValidationError(field, f"must be a duration such as 7d or 24h, got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := DURATION_PATTERN.match(value.strip())):
        seconds = int(m.group(1)) * _SECONDS[m.group(2)]
    else:
        raise ValidationError(field, f"must be a duration such as 7d, 24h or 90m, got {value!r}")
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise ValidationError(field, f"must be between 1 second and 366 days, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric of an experiment.

    ``event`` is the tracked event name (defaults to ``name``); for a ratio, ``event`` is the
    numerator and ``denominator`` the denominator's event name. ``window_seconds`` limits
    attribution to events within that long after the first exposure; ``cuped_lookback_seconds``
    enables CUPED with the metric's pre-exposure value over that lookback as covariate.
    """

    name: str
    kind: MetricKind
    event: str = ""
    denominator: str = ""
    window_seconds: int | None = None
    cuped_lookback_seconds: int | None = None

    def __post_init__(self) -> None:
        check_metric(self.name, "name")
        object.__setattr__(self, "kind", MetricKind(self.kind))
        if not self.event:
            object.__setattr__(self, "event", self.name)
        check_metric(self.event, "event")
        if self.kind is MetricKind.RATIO:
            check_metric(self.denominator, "denominator")
            if self.cuped_lookback_seconds is not None:
                raise ValidationError(
                    "cuped", "CUPED is supported for binary, count and continuous metrics only"
                )
        elif self.denominator:
            raise ValidationError("denominator", f"only ratio metrics have one, not {self.kind}")
        for field in ("window_seconds", "cuped_lookback_seconds"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ValidationError(field, f"must be a positive number of seconds, got {value!r}")

    @property
    def events(self) -> tuple[str, ...]:
        """The event names this metric reads."""
        return (self.event, self.denominator) if self.kind is MetricKind.RATIO else (self.event,)

    @property
    def cuped(self) -> bool:
        return self.cuped_lookback_seconds is not None
