"""Planning: sample size and power, and what each sequential mode costs in extra units.

Fixed horizon (two-sided level ``alpha``, allocation ``ratio = n_treatment / n_control``), via
statsmodels' power classes:

* continuous metrics -- ``TTestIndPower`` with Cohen's ``d = mde / std``;
* binary metrics -- ``NormalIndPower`` with Cohen's ``h = 2 asin(sqrt(p2)) - 2 asin(sqrt(p1))``
  (``proportion_effectsize``; the arcsine transform stabilises the binomial variance).

Sequential modes need more units at the horizon for the same power, and usually fewer on
average because they stop early. :func:`sequential_inflation` reports, relative to the fixed
design, the maximum sample size ``R`` needed for the requested power and the expected sample
size under H1 and under H0. Both are computed *exactly* (up to numerical integration) with the
Armitage-McPherson-Rowe recursion of :mod:`abkit.core.stats.group_sequential`, in the
known-variance normal approximation:

* group sequential -- the Lan-DeMets boundaries of the design;
* mSPRT -- the always-valid test rejects at a look iff ``|z_k| >= b_k`` with
  ``b_k = sqrt(2 (1 + r_k) / r_k log(sqrt(1 + r_k) / alpha))`` (the confidence-sequence
  half-width of :mod:`abkit.core.stats.sequential` in z units), ``r_k = N_k rho^2``. With
  ``n_star = f N_max`` this is ``r_k = L(alpha) t_k / f``, ``L(a) = -2 log a + log(1 - 2 log a)``,
  free of the units, so monitoring at ``looks`` equally spaced looks is a group-sequential design
  with known boundaries. ``looks=100`` stands in for continuous monitoring: the mSPRT boundary
  does not depend on the number of looks, so more looks only add chances to cross (1000 looks
  need 1.63x instead of 1.68x); the seeded simulations in ``tests/simulation`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import optimize, special

from abkit.core.stats.fixed_horizon import check_alpha
from abkit.core.stats.group_sequential import (
    Spending,
    check_sides,
    crossing_probabilities,
    spending_boundaries,
)
from abkit.errors import ValidationError


# statsmodels' power module costs ~0.7 s to import; planning is rare, so it is imported on use.
def _power_classes() -> tuple[Any, Any, Any]:
    from statsmodels.stats.power import NormalIndPower, TTestIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    return NormalIndPower, TTestIndPower, proportion_effectsize


@dataclass(frozen=True, slots=True)
class SampleSize:
    """Units needed per arm (rounded up) for a fixed-horizon test."""

    control: int
    treatment: int

    @property
    def total(self) -> int:
        return self.control + self.treatment


@dataclass(frozen=True, slots=True)
class Inflation:
    """Sample sizes of a sequential mode relative to the fixed-horizon design (same alpha/power)."""

    max_sample_ratio: float  # units needed at the horizon for the requested power
    expected_ratio_h1: float  # E[units at stop] under the planned effect
    expected_ratio_h0: float  # E[units at stop] under no effect (runs to the horizon mostly)
    power: float


def _check_power(power: float) -> float:
    if not 0.0 < power < 1.0:
        raise ValidationError("power", f"must be in (0, 1), got {power!r}")
    return float(power)


def _check_positive(value: float, name: str) -> float:
    if not (math.isfinite(value) and value > 0.0):
        raise ValidationError(name, f"must be a finite number > 0, got {value!r}")
    return float(value)


def _binary_effect(baseline: float, mde: float, relative: bool) -> float:
    if not 0.0 < baseline < 1.0:
        raise ValidationError("baseline", f"must be a proportion in (0, 1), got {baseline!r}")
    target = baseline * (1.0 + mde) if relative else baseline + mde
    if not 0.0 < target < 1.0 or target == baseline:
        raise ValidationError(
            "mde", f"baseline + effect must be a different proportion in (0, 1), got {target!r}"
        )
    return abs(float(_power_classes()[2](target, baseline)))


def sample_size_continuous(
    mde: float, std: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Units per arm to detect an absolute difference ``mde`` with per-unit s.d. ``std``."""
    d = abs(_check_positive(abs(mde), "mde")) / _check_positive(std, "std")
    n_c = _power_classes()[1]().solve_power(
        effect_size=d,
        alpha=check_alpha(alpha),
        power=_check_power(power),
        ratio=_check_positive(ratio, "ratio"),
        alternative="two-sided",
    )
    return SampleSize(math.ceil(float(n_c)), math.ceil(float(n_c) * ratio))


def power_continuous(
    mde: float, std: float, n_control: int, *, alpha: float = 0.05, ratio: float = 1.0
) -> float:
    d = abs(_check_positive(abs(mde), "mde")) / _check_positive(std, "std")
    return float(
        _power_classes()[1]().power(
            effect_size=d,
            nobs1=_check_positive(n_control, "n_control"),
            alpha=check_alpha(alpha),
            ratio=_check_positive(ratio, "ratio"),
            alternative="two-sided",
        )
    )


def sample_size_binary(
    baseline: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> SampleSize:
    """Units per arm to move a conversion rate ``baseline`` by ``mde`` (absolute or relative)."""
    h = _binary_effect(baseline, mde, relative)
    n_c = _power_classes()[0]().solve_power(
        effect_size=h,
        alpha=check_alpha(alpha),
        power=_check_power(power),
        ratio=_check_positive(ratio, "ratio"),
        alternative="two-sided",
    )
    return SampleSize(math.ceil(float(n_c)), math.ceil(float(n_c) * ratio))


def power_binary(
    baseline: float,
    mde: float,
    n_control: int,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    ratio: float = 1.0,
) -> float:
    h = _binary_effect(baseline, mde, relative)
    return float(
        _power_classes()[0]().power(
            effect_size=h,
            nobs1=_check_positive(n_control, "n_control"),
            alpha=check_alpha(alpha),
            ratio=_check_positive(ratio, "ratio"),
            alternative="two-sided",
        )
    )


def msprt_boundaries(
    information_fractions: Sequence[float],
    *,
    alpha: float = 0.05,
    n_star_fraction: float = 1.0,
    sides: int = 2,
) -> tuple[float, ...]:
    """z-scale rejection thresholds of the always-valid test at fractions of the horizon."""
    a = alpha if sides == 2 else 2.0 * alpha
    level = -2.0 * math.log(a) + math.log(1.0 - 2.0 * math.log(a))
    out = []
    for t in information_fractions:
        r = level * t / n_star_fraction
        log_term = (
            math.log(math.sqrt(1.0 + r) / alpha)
            if sides == 2
            else math.log1p(math.sqrt(1.0 + r) / (2.0 * alpha))
        )
        out.append(math.sqrt(2.0 * (1.0 + r) / r * log_term))
    return tuple(out)


def sequential_inflation(
    mode: str,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    looks: int | Sequence[float] = 5,
    spending: Spending = "obf",
    sides: int = 2,
    n_star_fraction: float = 1.0,
) -> Inflation:
    """Sample-size inflation of ``mode`` (``"group_sequential"`` or ``"msprt"``) vs fixed horizon.

    ``looks`` is a number of equally spaced looks or the information fractions themselves.
    ``n_star_fraction`` (mSPRT only) is the tuning size as a fraction of the horizon.
    """
    alpha, power, sides = check_alpha(alpha), _check_power(power), check_sides(sides)
    if isinstance(looks, int):
        if looks < 1:
            raise ValidationError("looks", f"must be >= 1, got {looks!r}")
        fractions: tuple[float, ...] = tuple((i + 1) / looks for i in range(looks))
    else:
        fractions = tuple(float(t) for t in looks)
    if mode == "group_sequential":
        bounds = spending_boundaries(fractions, alpha=alpha, spending=spending, sides=sides)
    elif mode == "msprt":
        bounds = msprt_boundaries(
            fractions,
            alpha=alpha,
            n_star_fraction=_check_positive(n_star_fraction, "n_star_fraction"),
            sides=sides,
        )
    else:
        raise ValidationError("mode", f"must be 'group_sequential' or 'msprt', got {mode!r}")

    return boundary_inflation(fractions, bounds, alpha=alpha, power=power, sides=sides)


def boundary_inflation(
    information_fractions: Sequence[float],
    boundaries: Sequence[float],
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    sides: int = 2,
) -> Inflation:
    """Inflation of any design given by its z-scale boundaries (Jennison & Turnbull's ``R``).

    ``R = (drift_K / (z_{1-alpha/sides} + z_{power}))^2`` where ``drift_K`` is the drift at which
    the design crosses a boundary with probability ``power`` (J&T 2000, Sec. 2.3-2.4).
    """
    fractions = tuple(float(t) for t in information_fractions)
    bounds = tuple(float(b) for b in boundaries)

    def stopping(drift: float) -> tuple[float, float]:
        """(power, expected fraction of the horizon used) at this drift."""
        crossings = crossing_probabilities(fractions, bounds, drift=drift, sides=sides)
        probs = [up + low for up, low in crossings]
        reached = sum(probs)
        used = sum(t * p for t, p in zip(fractions, probs, strict=True))
        return reached, used + fractions[-1] * (1.0 - reached)

    drift = optimize.brentq(lambda d: stopping(d)[0] - power, 0.0, 20.0, xtol=1e-10)
    fixed_drift = float(special.ndtri(1.0 - alpha / sides) + special.ndtri(power))
    ratio = (drift / fixed_drift) ** 2
    return Inflation(
        max_sample_ratio=ratio,
        expected_ratio_h1=ratio * stopping(drift)[1],
        expected_ratio_h0=ratio * stopping(0.0)[1],
        power=power,
    )
