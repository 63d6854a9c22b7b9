"""Group-sequential monitoring of an experiment: z statistic against alpha-spending boundaries.

The alternative to always-valid inference when the number of units is planned in advance and the
worker looks a modest number of times: boundaries spend alpha only at the looks actually taken,
so a design with few looks needs fewer units than the mSPRT for the same power (see
docs/statistics.md).

The information fraction of a look is its total sample size over the planned maximum,
``t_k = N_k / max_sample_size`` (the usual proxy for ``I_k / I_max`` when the metric's variance is
stable). At look ``k`` with boundary ``c_k``:

* two-sided: reject ``H0: delta = null`` when ``|z_k| >= c_k``;
* one-sided: reject ``H0: delta <= null`` (``H1: delta > null``) when ``z_k >= c_k``;

with ``z_k = (estimate - null) / SE``. The interval reported is the repeated confidence interval
``estimate -+ c_k SE`` (Jennison & Turnbull 2000, Ch. 9), which has simultaneous
coverage ``1 - alpha`` over the looks. There is no p-value with the meaning of a fixed-horizon
p-value at an interim look, so the result reports the *nominal* p-value of ``z_k`` next to the
*nominal* level that the boundary corresponds to; ``reject`` is their comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from abkit.core.stats.effect import estimate_effect
from abkit.core.stats.group_sequential import GroupSequentialDesign, Spending
from abkit.core.stats.result import TestStatus
from abkit.core.stats.summary import Summary
from abkit.errors import ValidationError


@dataclass(frozen=True, slots=True)
class GroupSequentialResult:
    """One interim (or final) analysis of a group-sequential design."""

    estimate: float
    ci_low: float  # repeated confidence interval
    ci_high: float
    z: float
    boundary: float  # z-scale critical value c_k of this look
    information_fraction: float
    look: int
    nominal_p_value: float  # P(|Z| >= |z|) two-sided, P(Z >= z) one-sided
    nominal_alpha: float  # the same tail probability at the boundary
    reject: bool
    status: TestStatus
    std_error: float


@dataclass(frozen=True, slots=True)
class GroupSequentialState:
    """What a :class:`GroupSequentialMonitor` must remember between looks (persist it).

    The boundaries are a deterministic function of the information fractions already used, so
    the fractions (and the units at the last look) are the whole state: a restarted worker
    replays them and continues the same design.
    """

    fractions: tuple[float, ...] = ()
    last_n: int = 0


class GroupSequentialMonitor:
    """Looks at cumulative arm summaries against a Lan-DeMets design with ``max_sample_size``.

    Looks where the data is not usable yet (status not ``OK``) are not counted and spend nothing.
    A look with no new units returns the previous boundary without spending.
    """

    def __init__(
        self,
        max_sample_size: int,
        *,
        alpha: float = 0.05,
        spending: Spending = "obf",
        sides: int = 2,
        null: float = 0.0,
        relative: bool = False,
        cuped: bool = False,
        state: GroupSequentialState | None = None,
    ) -> None:
        if (
            isinstance(max_sample_size, bool)
            or not isinstance(max_sample_size, int)
            or max_sample_size < 2
        ):
            raise ValidationError(
                "max_sample_size", f"must be an integer >= 2, got {max_sample_size!r}"
            )
        if not math.isfinite(null):
            raise ValidationError("null", f"must be finite, got {null!r}")
        self.max_sample_size = max_sample_size
        self.design = GroupSequentialDesign(alpha=alpha, spending=spending, sides=sides)
        self.null = float(null)
        self.relative = relative
        self.cuped = cuped
        self._last_n = 0
        if state is not None:
            for t in state.fractions:
                self.design.add_look(t, final=t >= 1.0)
            self._last_n = state.last_n

    @property
    def state(self) -> GroupSequentialState:
        return GroupSequentialState(tuple(self.design.fractions), self._last_n)

    def update(
        self, control: Summary, treatment: Summary, *, final: bool = False
    ) -> GroupSequentialResult:
        effect = estimate_effect(control, treatment, relative=self.relative, cuped=self.cuped)
        n_total = control.n + treatment.n
        if n_total < self._last_n:
            raise ValidationError(
                "control.n", "summaries must be cumulative (fewer units than last look)"
            )
        sides = self.design.sides
        if effect.status is not TestStatus.OK:
            return GroupSequentialResult(
                effect.estimate,
                -math.inf,
                math.inf,
                math.nan,
                math.inf,
                n_total / self.max_sample_size,
                len(self.design.boundaries),
                1.0,
                0.0,
                False,
                effect.status,
                math.nan,
            )
        t = n_total / self.max_sample_size
        if n_total == self._last_n and not final:
            boundary = self.design.boundaries[-1]
        else:
            boundary = self.design.add_look(t, final=final)
        self._last_n = n_total
        se = effect.std_error
        z = (effect.estimate - self.null) / se
        if sides == 2:
            nominal_p = float(2.0 * special.ndtr(-abs(z)))
            nominal_alpha = float(2.0 * special.ndtr(-boundary))
            reject = abs(z) >= boundary
            low, high = effect.estimate - boundary * se, effect.estimate + boundary * se
        else:
            nominal_p = float(special.ndtr(-z))
            nominal_alpha = float(special.ndtr(-boundary))
            reject = z >= boundary
            low, high = effect.estimate - boundary * se, math.inf
        return GroupSequentialResult(
            estimate=effect.estimate,
            ci_low=low,
            ci_high=high,
            z=z,
            boundary=boundary,
            information_fraction=t,
            look=len(self.design.boundaries),
            nominal_p_value=nominal_p,
            nominal_alpha=nominal_alpha,
            reject=reject,
            status=TestStatus.OK,
            std_error=se,
        )
