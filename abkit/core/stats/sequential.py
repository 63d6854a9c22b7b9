"""Always-valid inference: the mixture SPRT, its e-value, p-value and confidence sequence.

abkit's default test. It stays valid however often and whenever the results are looked at, so the
worker can analyse every few minutes and stop the moment the evidence is there.

**Model.** The effect estimate ``d`` (difference in means, or relative lift) is approximately
``N(delta, v)`` with ``v`` its estimated variance. For a null value ``delta0`` and a normal mixing
distribution ``delta ~ N(delta0, tau^2)`` the mixture likelihood ratio is the normal-mixture mSPRT
of Johari, Koomen, Pekelis & Walsh, "Peeking at A/B tests" (KDD 2017) and "Always valid inference:
continuous monitoring of A/B tests" (Operations Research 70(3), 2022), for the two-sample
difference of means::

    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 (d - delta0)^2 / (2 v (v + tau^2)))

Writing ``r = tau^2 / v`` and ``z = (d - delta0) / sqrt(v)``:
``log Lambda = r z^2 / (2 (1 + r)) - log(1 + r) / 2``. ``Lambda`` is an e-process under ``H0``;
by Ville's inequality ``P(sup Lambda >= 1/alpha) <= alpha``, so the **always-valid p-value** is
the running minimum of ``min(1, 1/Lambda)`` (Johari et al.'s always-valid p-value) and the
**confidence sequence** is the running intersection of ``{delta0 : Lambda(delta0) < 1/alpha}``.

**Tuning.** Pass ``tau`` (the mixing standard deviation, on the scale of the estimate), or
``n_star``, the total sample size at which the sequence should be tightest. ``n_star`` reproduces
the asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences" (arXiv:2103.06476v7),
exactly as GrowthBook's gbstats implements them: with ``N = n_c + n_t`` and per-unit variance
``s^2 = N v``, ``rho^2 = (-2 log a + log(1 - 2 log a)) / n_star`` (their eq. (161);
equation numbers of arXiv v7 as cited in gbstats), ``a = alpha`` for two sides, and the mixture
variance is ``tau^2 = rho^2 s^2``, i.e. ``r = N rho^2``. The half-width is their eq. (9)::

    sqrt(v) * sqrt(2 (1 + r) / r * log(sqrt(1 + r) / alpha))

and the p-value their eq. (155), which is ``min(1, 1/Lambda)`` above. When neither is given,
``n_star = 5000`` (gbstats' default tuning parameter).

**One-sided** (``sides=1``): ``H0: delta <= null`` against ``H1: delta > null`` -- "treatment is
better than ``null``"; ``alternative="less"`` mirrors it (``H1: delta < null``, upper bound).
For a guardrail (non-inferiority) put the tolerated loss as a negative ``null``, e.g.
``null=-0.01`` with ``relative=True`` means "not more than 1 % worse"; for a lower-is-better
metric use ``alternative="less"`` with a positive ``null`` (negating both arms flips an absolute
difference but not a relative lift, since ``(-t)/(-c) - 1`` is unchanged). The bound is the
closed-form one-sided normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences" (Ann. Statist. 49(2), 2021)::

    lower = d - sqrt(v * 2 (1 + r) / r * log(1 + sqrt(1 + r) / (2 alpha)))

with ``rho`` tuned at ``2 alpha`` -- the form gbstats' one-sided sequential tests use upstream.
Its e-value is ``2 (exp(r z^2 / (2 (1 + r))) - 1) / sqrt(1 + r)`` for ``z > 0`` (0 otherwise),
which is below the exact half-normal-mixture likelihood ratio, hence valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from abkit.core.stats.effect import estimate_effect
from abkit.core.stats.fixed_horizon import check_alpha
from abkit.core.stats.result import Method, TestResult, TestStatus, uninformative
from abkit.core.stats.summary import Summary
from abkit.errors import ValidationError

DEFAULT_N_STAR = 5000.0
"""gbstats' default ``sequential_tuning_parameter``: tightest confidence sequence at N = 5000."""

FloatOrArray = TypeVar("FloatOrArray", float, NDArray[np.float64])


def mixture_rho_squared(alpha: float, n_star: float, sides: int = 2) -> float:
    """``rho^2`` of Waudby-Smith et al. eq. (161): the mixture tightest at total size ``n_star``."""
    a = alpha if sides == 2 else 2.0 * alpha
    return (-2.0 * math.log(a) + math.log(1.0 - 2.0 * math.log(a))) / n_star


def log_e_value(z: FloatOrArray, r: FloatOrArray, sides: int) -> FloatOrArray:
    """Log mixture e-value for standardised statistics ``z`` and mixture ratios ``r = tau^2 / v``.

    Vectorised (the simulations call it on whole arrays of looks). Two-sided: Johari et al.
    (2022) normal mixture. One-sided: Howard et al. (2021) closed-form bound, ``-inf`` for
    ``z <= 0``.
    """
    exponent = r * z * z / (2.0 * (1.0 + r))
    if sides == 2:
        return exponent - 0.5 * np.log1p(r)  # type: ignore[no-any-return]
    # log(2 (e^E - 1)) = log 2 + E + log(1 - e^-E), stable for large E, -inf at E = 0.
    # z > 0 whose square underflows has E = 0, i.e. e-value 0 (no evidence), like z <= 0.
    positive = (np.asarray(z) > 0.0) & (np.asarray(exponent) > 0.0)
    safe = np.where(positive, exponent, 1.0)
    value = np.log(2.0) + safe + np.log(-np.expm1(-safe)) - 0.5 * np.log1p(r)
    result = np.where(positive, value, -np.inf)
    return float(result) if np.ndim(result) == 0 else result  # type: ignore[return-value]


def half_width(variance: FloatOrArray, r: FloatOrArray, alpha: float, sides: int) -> FloatOrArray:
    """Confidence-sequence half-width (Waudby-Smith et al. eq. (9); one-sided: Howard et al.)."""
    if sides == 2:
        log_term = np.log(np.sqrt(1.0 + r) / alpha)
    else:
        log_term = np.log1p(np.sqrt(1.0 + r) / (2.0 * alpha))
    return np.sqrt(variance * 2.0 * (1.0 + r) / r * log_term)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class SequentialConfig:
    """Validated knobs of the always-valid test (see the module docstring for their meaning)."""

    alpha: float = 0.05
    tau: float | None = None
    n_star: float | None = None
    null: float = 0.0
    sides: int = 2
    relative: bool = False
    cuped: bool = False
    alternative: str = "greater"
    """One-sided direction: ``greater`` tests H1 delta > null (lower bound), ``less`` tests
    H1 delta < null (upper bound). A relative lift cannot be flipped by negating the arms
    (``(-t)/(-c) - 1`` is the same lift), hence this switch."""

    def __post_init__(self) -> None:
        if self.sides not in (1, 2) or isinstance(self.sides, bool):
            raise ValidationError("sides", f"must be 1 or 2, got {self.sides!r}")
        if self.alternative not in ("greater", "less"):
            raise ValidationError(
                "alternative", f"must be 'greater' or 'less', got {self.alternative!r}"
            )
        check_alpha(self.alpha, upper=1.0 if self.sides == 2 else 0.5)
        if self.tau is not None and self.n_star is not None:
            raise ValidationError("tau", "give tau or n_star, not both")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau > 0.0):
            raise ValidationError("tau", f"must be a finite number > 0, got {self.tau!r}")
        if self.n_star is not None and not (math.isfinite(self.n_star) and self.n_star > 0.0):
            raise ValidationError("n_star", f"must be a finite number > 0, got {self.n_star!r}")
        if not math.isfinite(self.null):
            raise ValidationError("null", f"must be finite, got {self.null!r}")

    def mixture_ratio(self, variance: float, n_total: int) -> float:
        """``r = tau^2 / v`` for this look."""
        if self.tau is not None:
            return self.tau * self.tau / variance
        n_star = DEFAULT_N_STAR if self.n_star is None else self.n_star
        return n_total * mixture_rho_squared(self.alpha, n_star, self.sides)


def sequential_test(
    control: Summary,
    treatment: Summary,
    *,
    alpha: float = 0.05,
    tau: float | None = None,
    n_star: float | None = None,
    null: float = 0.0,
    sides: int = 2,
    relative: bool = False,
    cuped: bool = False,
    alternative: str = "greater",
) -> TestResult:
    """One look of the always-valid test. Valid at any single data-dependent look; to combine
    looks (running-min p-value, intersected confidence sequence) use :class:`SequentialMonitor`."""
    config = SequentialConfig(alpha, tau, n_star, null, sides, relative, cuped, alternative)
    return _look(config, control, treatment)


def _look(config: SequentialConfig, control: Summary, treatment: Summary) -> TestResult:
    effect = estimate_effect(control, treatment, relative=config.relative, cuped=config.cuped)
    if effect.status is not TestStatus.OK:
        return uninformative(effect.status, Method.MSPRT, estimate=effect.estimate, sequential=True)
    r = config.mixture_ratio(effect.variance, effect.n_total)
    # "less" is "greater" on the mirrored statistic: H1 delta < null <=> -delta > -null.
    sign = -1.0 if config.sides == 1 and config.alternative == "less" else 1.0
    z = sign * (effect.estimate - config.null) / effect.std_error
    log_e = float(log_e_value(z, r, config.sides))
    width = float(half_width(effect.variance, r, config.alpha, config.sides))
    lower = effect.estimate - width if config.sides == 2 or sign > 0 else -math.inf
    upper = effect.estimate + width if config.sides == 2 or sign < 0 else math.inf
    return TestResult(
        estimate=effect.estimate,
        ci_low=lower,
        ci_high=upper,
        # p = min(1, 1/Lambda): 1 unless Lambda > 1, so exp never overflows (a positive z so
        # small that Lambda underflows below e^-709 gives log_e < -709).
        p_value=math.exp(-log_e) if log_e > 0.0 else 1.0,
        e_value=math.exp(min(log_e, 709.0)),
        status=TestStatus.OK,
        std_error=effect.std_error,
        method=Method.MSPRT,
    )


@dataclass(frozen=True, slots=True)
class MonitorState:
    """What a :class:`SequentialMonitor` remembers between looks (persist it across restarts)."""

    looks: int = 0
    p_value: float = 1.0
    ci_low: float = -math.inf
    ci_high: float = math.inf
    n_total: int = 0


class SequentialMonitor:
    """Always-valid monitoring across looks: running-min p-value, running-intersection CS.

    Feed it the *cumulative* summaries at each look. Each :meth:`update` returns the always-valid
    result up to now: ``p_value`` is the minimum over looks, ``[ci_low, ci_high]`` the
    intersection of the looks' confidence sequences, ``e_value`` the current look's e-value and
    ``estimate`` the current estimate. An empty intersection is reported with status
    ``EMPTY_CONFIDENCE_SEQUENCE`` and ``ci_low > ci_high`` left visible. A look whose data is
    not usable (e.g. still one unit in an arm) returns that status and leaves the state alone.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        tau: float | None = None,
        n_star: float | None = None,
        null: float = 0.0,
        sides: int = 2,
        relative: bool = False,
        cuped: bool = False,
        alternative: str = "greater",
        state: MonitorState | None = None,
    ) -> None:
        self.config = SequentialConfig(
            alpha, tau, n_star, null, sides, relative, cuped, alternative
        )
        self.state = MonitorState() if state is None else state

    def update(self, control: Summary, treatment: Summary) -> TestResult:
        n_total = control.n + treatment.n
        if n_total < self.state.n_total:
            raise ValidationError(
                "control.n",
                f"summaries must be cumulative: {n_total} units now, {self.state.n_total} at the "
                "previous look; start a new monitor to analyse a different data set",
            )
        look = _look(self.config, control, treatment)
        if look.status is not TestStatus.OK:
            return look
        state = MonitorState(
            looks=self.state.looks + 1,
            p_value=min(self.state.p_value, look.p_value),
            ci_low=max(self.state.ci_low, look.ci_low),
            ci_high=min(self.state.ci_high, look.ci_high),
            n_total=n_total,
        )
        self.state = state
        empty = state.ci_low > state.ci_high
        return TestResult(
            estimate=look.estimate,
            ci_low=state.ci_low,
            ci_high=state.ci_high,
            p_value=state.p_value,
            e_value=look.e_value,
            status=TestStatus.EMPTY_CONFIDENCE_SEQUENCE if empty else TestStatus.OK,
            std_error=look.std_error,
            method=Method.MSPRT,
        )
