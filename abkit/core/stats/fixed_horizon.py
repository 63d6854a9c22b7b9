"""Fixed-horizon (classical) two-sample tests: valid for ONE look at a planned sample size.

Use them for the final read-out of a planned experiment, or as the "naive" baseline that the
simulations show is invalid under peeking. For monitoring while data arrives use
:mod:`abkit.core.stats.sequential` (always valid) or :mod:`abkit.core.stats.group_sequential`.

Which test runs is decided by the data shape:

* continuous metric -- Welch's unequal-variance t test (Welch 1947), df by Welch-Satterthwaite;
  confidence interval ``estimate +- t_{1-alpha/2, df} * SE``. Matches
  ``scipy.stats.ttest_ind(treatment, control, equal_var=False)``.
* binary metric (both arms 0/1, see :attr:`ArmSummary.is_binary`) -- two-proportion z test.
  The **p-value uses the pooled standard error** ``sqrt(p(1-p)(1/n_c + 1/n_t))`` with ``p`` the
  pooled proportion: under ``H0: p_t == p_c`` the pooled proportion is the MLE of the common
  variance, which gives the score test (= Pearson chi-square on the 2x2 table, R's ``prop.test``
  without continuity correction, statsmodels ``proportions_ztest``'s default) whose size is
  closer to nominal in small samples than the Wald test's. The **interval uses the unpooled**
  (Wald) standard error ``sqrt(p_c(1-p_c)/n_c + p_t(1-p_t)/n_t)``, because away from ``H0`` the
  arms have different variances. Consequence: when ``|z|`` sits right at the critical value the
  two can disagree (p just below alpha, interval just touching 0); at A/B-test sample sizes the
  two standard errors differ in the third significant digit.
* CUPED (``cuped=True``) -- Deng et al. (2013) adjusted difference with Welch df on the
  adjusted per-arm variances.
* ratio metric (:class:`RatioSummary`) or ``relative=True`` -- delta-method standard error with a
  normal reference (the delta method is a large-sample approximation; a t quantile would suggest
  a small-sample exactness it does not have).

With ``relative=True`` the estimate and interval are for the lift ``treatment/control - 1`` but
the p-value is still the test of ``H0: mean_t == mean_c`` on the absolute scale: it is the same
hypothesis, and the absolute test needs no Taylor approximation.
"""

from __future__ import annotations

import math

from scipy import special

from abkit.core.stats.effect import Effect, estimate_effect
from abkit.core.stats.result import Method, TestResult, TestStatus, uninformative
from abkit.core.stats.summary import Summary
from abkit.errors import ValidationError


def check_alpha(alpha: float, *, upper: float = 1.0) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ValidationError("alpha", f"must be a number in (0, {upper}), got {alpha!r}")
    if not 0.0 < alpha < upper:
        raise ValidationError("alpha", f"must be in (0, {upper}), got {alpha!r}")
    return float(alpha)


def two_sided_p(statistic: float, df: float) -> float:
    """``P(|T| >= |statistic|)`` for Student t with ``df`` (normal when ``df`` is infinite)."""
    if math.isinf(df):
        return float(2.0 * special.ndtr(-abs(statistic)))
    return float(2.0 * special.stdtr(df, -abs(statistic)))


def quantile(prob: float, df: float) -> float:
    """The ``prob`` quantile of Student t with ``df`` (normal when ``df`` is infinite)."""
    if math.isinf(df):
        return float(special.ndtri(prob))
    return float(special.stdtrit(df, prob))


def fixed_horizon_test(
    control: Summary,
    treatment: Summary,
    *,
    alpha: float = 0.05,
    relative: bool = False,
    cuped: bool = False,
) -> TestResult:
    """Two-sided fixed-horizon test of treatment against control (see the module docstring)."""
    alpha = check_alpha(alpha)
    absolute = estimate_effect(control, treatment, relative=False, cuped=cuped)
    if absolute.status is not TestStatus.OK:
        return uninformative(absolute.status, absolute.method, estimate=absolute.estimate)
    p_value = _p_value(absolute)
    shown = (
        estimate_effect(control, treatment, relative=True, cuped=cuped) if relative else absolute
    )
    if shown.status is not TestStatus.OK:
        return uninformative(shown.status, shown.method, estimate=shown.estimate)
    half_width = quantile(1.0 - alpha / 2.0, shown.df) * shown.std_error
    return TestResult(
        estimate=shown.estimate,
        ci_low=shown.estimate - half_width,
        ci_high=shown.estimate + half_width,
        p_value=p_value,
        e_value=None,
        status=TestStatus.OK,
        std_error=shown.std_error,
        method=shown.method if relative else absolute.method,
    )


def _p_value(effect: Effect) -> float:
    if effect.method is Method.TWO_PROPORTION_Z and effect.null_std_error:
        return two_sided_p(effect.estimate / effect.null_std_error, math.inf)
    return two_sided_p(effect.estimate / effect.std_error, effect.df)
