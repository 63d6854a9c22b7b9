"""The treatment effect and its standard error, from two arms' sufficient statistics.

One place computes *what* is compared (absolute difference or relative lift; raw, CUPED-adjusted,
proportion or ratio metric) so that the fixed-horizon, always-valid and group-sequential tests
differ only in *how* they turn ``(estimate, variance)`` into evidence.

Sources:

* Welch (1947) and Satterthwaite (1946): unequal-variance standard error and approximate df.
* Deng, Xu, Kohavi & Walker (2013), "Improving the sensitivity of online controlled experiments
  by utilizing pre-experiment data" (CUPED), WSDM: eq. (2) the control-variate mean
  ``Y_cv = mean(Y) - theta * mean(X) + theta * E[X]``, eq. (3) ``theta = cov(Y, X) / var(X)``,
  eq. (4) ``Var(Y_cv) = Var(mean(Y)) (1 - rho^2)``, eq. (6) the CUPED delta, and Sec. 3.2.2: the
  same ``theta`` must be used in both arms, estimated on the pooled population.
* Deng, Knoblich & Lu (2018), "Applying the delta method in metric analytics", KDD: variance of
  a ratio of means and of a percent change by first-order Taylor expansion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from abkit.core.stats.result import Method, TestStatus
from abkit.core.stats.summary import ArmSummary, RatioSummary, Summary
from abkit.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Effect:
    """A point estimate with the variance of its sampling distribution.

    ``df`` is the Welch-Satterthwaite degrees of freedom for a t reference distribution, or
    ``inf`` where only a normal (large-sample) reference is justified (delta method).
    ``null_std_error`` is the standard error under ``H0: p_t == p_c`` for binary metrics (pooled
    proportion); ``None`` otherwise. ``n_total`` counts units in both arms (the ``N`` of the
    asymptotic confidence sequences).
    """

    estimate: float
    variance: float
    df: float
    status: TestStatus
    method: Method
    n_total: int
    null_std_error: float | None = None

    @property
    def std_error(self) -> float:
        return math.sqrt(self.variance) if self.variance >= 0.0 else math.nan


@dataclass(frozen=True, slots=True)
class _Arms:
    """Per-arm means and variances-of-the-mean on a common footing for the formulas below.

    ``m_*`` are the (possibly adjusted) arm means and ``v_*`` the variances of those means.
    ``base`` is the unadjusted control mean that a relative lift divides by, ``v_base`` its
    variance and ``c_base`` its covariance with ``m_c`` (equal to ``v_base`` when unadjusted).
    """

    m_t: float
    v_t: float
    n_t: int
    m_c: float
    v_c: float
    n_c: int
    base: float
    v_base: float
    c_base: float


def estimate_effect(
    control: Summary, treatment: Summary, *, relative: bool = False, cuped: bool = False
) -> Effect:
    """Treatment minus control (or relative lift) with its variance and reference df."""
    if isinstance(control, RatioSummary) and isinstance(treatment, RatioSummary):
        if cuped:
            raise ValidationError(
                "cuped", "CUPED is not available for ratio metrics; pass cuped=False"
            )
        return _finish(_ratio_arms(control, treatment), relative, Method.DELTA_Z, df=math.inf)
    if isinstance(control, ArmSummary) and isinstance(treatment, ArmSummary):
        n_total = control.n + treatment.n
        if control.n < 2 or treatment.n < 2:
            return _raw(control, treatment, TestStatus.NOT_ENOUGH_DATA, Method.WELCH_T, n_total)
        if cuped:
            arms = _cuped_arms(control, treatment)
            return _finish(arms, relative, Method.CUPED_WELCH_T, df=None)
        if control.is_binary and treatment.is_binary:
            return _binary(control, treatment, relative)
        arms = _plain_arms(control.mean, control.variance, control.n, treatment)
        return _finish(arms, relative, Method.WELCH_T, df=None)
    raise ValidationError(
        "treatment",
        "control and treatment must both be ArmSummary or both RatioSummary, got "
        f"{type(control).__name__} and {type(treatment).__name__}",
    )


def _raw(
    control: ArmSummary, treatment: ArmSummary, status: TestStatus, method: Method, n_total: int
) -> Effect:
    defined = control.n > 0 and treatment.n > 0
    estimate = treatment.mean - control.mean if defined else math.nan
    return Effect(estimate, math.nan, math.nan, status, method, n_total)


def _plain_arms(mean_c: float, var_c: float, n_c: int, treatment: ArmSummary) -> _Arms:
    v_c = var_c / n_c
    return _Arms(
        m_t=treatment.mean,
        v_t=treatment.variance / treatment.n,
        n_t=treatment.n,
        m_c=mean_c,
        v_c=v_c,
        n_c=n_c,
        base=mean_c,
        v_base=v_c,
        c_base=v_c,
    )


def _binary(control: ArmSummary, treatment: ArmSummary, relative: bool) -> Effect:
    # Binary outcomes: the per-unit variance is p(1 - p) (the Bernoulli MLE, as in the Wald
    # interval and in gbstats' ProportionStatistic), not the ddof=1 sample variance.
    p_c, p_t = control.mean, treatment.mean
    arms = _Arms(
        m_t=p_t,
        v_t=p_t * (1.0 - p_t) / treatment.n,
        n_t=treatment.n,
        m_c=p_c,
        v_c=p_c * (1.0 - p_c) / control.n,
        n_c=control.n,
        base=p_c,
        v_base=p_c * (1.0 - p_c) / control.n,
        c_base=p_c * (1.0 - p_c) / control.n,
    )
    effect = _finish(arms, relative, Method.TWO_PROPORTION_Z, df=math.inf)
    # Under H0 both arms share one proportion; its MLE is the pooled proportion (score test).
    pooled = (control.sum + treatment.sum) / (control.n + treatment.n)
    null_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n))
    return Effect(
        effect.estimate,
        effect.variance,
        effect.df,
        effect.status,
        effect.method,
        effect.n_total,
        null_std_error=null_se,
    )


def cuped_theta(control: ArmSummary, treatment: ArmSummary) -> float:
    """Deng et al. (2013) eq. (3), ``theta = cov(Y, X) / var(X)``, on both arms pooled (Sec. 3.2.2).

    Pooling ignores the arm labels (as gbstats does): ``X`` is pre-experiment so its distribution
    is the same in both arms, and one ``theta`` for both keeps the CUPED delta unbiased.
    Returns 0 (no adjustment) when the pooled covariate or metric has no variance.
    """
    n = control.n + treatment.n
    if n < 2:
        return 0.0
    sy, syy = control.sum + treatment.sum, control.sum_sq + treatment.sum_sq
    sx, sxx = control.x_sum + treatment.x_sum, control.x_sum_sq + treatment.x_sum_sq
    sxy = control.xy_sum + treatment.xy_sum
    var_x = (sxx - sx * sx / n) / (n - 1)
    var_y = (syy - sy * sy / n) / (n - 1)
    if var_x <= 0.0 or var_y <= 0.0:
        return 0.0
    return ((sxy - sx * sy / n) / (n - 1)) / var_x


def _cuped_arms(control: ArmSummary, treatment: ArmSummary) -> _Arms:
    theta = cuped_theta(control, treatment)

    def adjusted(arm: ArmSummary) -> tuple[float, float]:
        # eq. (2) without the constant theta*E[X], which cancels in the delta (eq. 6); variance
        # from Sec. 3.2.1: Var(Y - theta X) = Var(Y) + theta^2 Var(X) - 2 theta Cov(Y, X).
        var = arm.variance + theta * theta * arm.x_variance - 2.0 * theta * arm.xy_covariance
        return arm.mean - theta * arm.x_mean, max(var, 0.0)

    m_t, var_t = adjusted(treatment)
    m_c, var_c = adjusted(control)
    # The relative lift divides by the *unadjusted* control mean; its covariance with the
    # adjusted control mean is Cov(Y - theta X, Y) / n = (Var Y - theta Cov(X, Y)) / n.
    return _Arms(
        m_t=m_t,
        v_t=var_t / treatment.n,
        n_t=treatment.n,
        m_c=m_c,
        v_c=var_c / control.n,
        n_c=control.n,
        base=control.mean,
        v_base=control.variance / control.n,
        c_base=(control.variance - theta * control.xy_covariance) / control.n,
    )


def _ratio_arms(control: RatioSummary, treatment: RatioSummary) -> _Arms | TestStatus:
    if control.n < 2 or treatment.n < 2:
        return TestStatus.NOT_ENOUGH_DATA
    if control.den_sum == 0.0 or treatment.den_sum == 0.0:
        return TestStatus.ZERO_BASELINE
    v_c = control.variance / control.n
    return _Arms(
        m_t=treatment.mean,
        v_t=treatment.variance / treatment.n,
        n_t=treatment.n,
        m_c=control.mean,
        v_c=v_c,
        n_c=control.n,
        base=control.mean,
        v_base=v_c,
        c_base=v_c,
    )


def _welch_df(arms: _Arms) -> float:
    """Welch-Satterthwaite df ``(v_t + v_c)^2 / (v_t^2/(n_t-1) + v_c^2/(n_c-1))``."""
    denominator = arms.v_t * arms.v_t / (arms.n_t - 1) + arms.v_c * arms.v_c / (arms.n_c - 1)
    if denominator <= 0.0:
        return math.nan
    total = arms.v_t + arms.v_c
    return total * total / denominator


def _finish(arms: _Arms | TestStatus, relative: bool, method: Method, df: float | None) -> Effect:
    if isinstance(arms, TestStatus):
        return Effect(math.nan, math.nan, math.nan, arms, method, 0)
    n_total = arms.n_t + arms.n_c
    delta = arms.m_t - arms.m_c
    variance = arms.v_t + arms.v_c
    if not variance > 0.0:
        return Effect(delta, math.nan, math.nan, TestStatus.ZERO_VARIANCE, method, n_total)
    if not relative:
        return Effect(
            delta, variance, _welch_df(arms) if df is None else df, TestStatus.OK, method, n_total
        )
    if arms.base == 0.0:
        return Effect(
            math.nan, math.nan, math.nan, TestStatus.ZERO_BASELINE, Method.DELTA_Z, n_total
        )
    # Relative lift g = (m_t - m_c) / base. First-order delta method (Deng, Knoblich & Lu 2018,
    # percent change) with gradient (1/base, -1/base, -delta/base^2) over (m_t, m_c, base):
    # Var(g) = (v_t + v_c)/base^2 + delta^2 v_base/base^4 + 2 delta Cov(m_c, base)/base^3.
    # Without CUPED m_c is base and this reduces to v_t/base^2 + m_t^2 v_c/base^4.
    base = arms.base
    lift = delta / base
    # Same formula, grouped so that a tiny baseline cannot underflow base**4 to zero.
    lift_var = (variance + lift * lift * arms.v_base + 2.0 * lift * arms.c_base) / base / base
    if not math.isfinite(lift_var):  # baseline indistinguishable from 0 at float precision
        return Effect(lift, math.nan, math.nan, TestStatus.ZERO_BASELINE, Method.DELTA_Z, n_total)
    if not lift_var > 0.0:
        return Effect(lift, math.nan, math.nan, TestStatus.ZERO_VARIANCE, Method.DELTA_Z, n_total)
    return Effect(lift, lift_var, math.inf, TestStatus.OK, Method.DELTA_Z, n_total)
