"""Fixed-horizon tests against scipy/statsmodels oracles on raw simulated data and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from abkit.core.stats import (
    ArmSummary,
    Method,
    RatioSummary,
    TestStatus,
    cuped_theta,
    fixed_horizon_test,
)
from abkit.errors import ValidationError


@pytest.mark.parametrize(("n_c", "n_t", "sd_c", "sd_t", "shift"), [
    (30, 45, 1.0, 2.0, 0.4), (500, 520, 3.0, 3.0, 0.1), (5000, 4000, 1.0, 0.5, 0.0),
    (3, 4, 1.0, 1.0, 1.0),
])  # fmt: skip
def test_welch_matches_scipy_and_statsmodels(
    n_c: int, n_t: int, sd_c: float, sd_t: float, shift: float
) -> None:
    rng = np.random.default_rng(n_c + n_t)
    control = rng.normal(10.0, sd_c, n_c)
    treatment = rng.normal(10.0 + shift, sd_t, n_t)
    result = fixed_horizon_test(
        ArmSummary.from_values(control.tolist()),
        ArmSummary.from_values(treatment.tolist()),
        alpha=0.05,
    )
    oracle = stats.ttest_ind(treatment, control, equal_var=False)
    ci = oracle.confidence_interval(0.95)
    assert result.method is Method.WELCH_T and result.ok
    assert result.estimate == pytest.approx(treatment.mean() - control.mean(), rel=1e-10)
    assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-8)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-8)
    sm = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    assert (result.ci_low, result.ci_high) == pytest.approx(
        sm.tconfint_diff(alpha=0.05, usevar="unequal"), rel=1e-8
    )
    assert result.e_value is None


def test_two_proportion_z_matches_statsmodels() -> None:
    n_c, x_c, n_t, x_t = 4000, 400, 4100, 470
    result = fixed_horizon_test(
        ArmSummary.from_proportion(n_c, x_c), ArmSummary.from_proportion(n_t, x_t)
    )
    # p-value: pooled SE (score test), statsmodels' default.
    _, p = proportions_ztest([x_t, x_c], [n_t, n_c])
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.method is Method.TWO_PROPORTION_Z
    # interval: unpooled Wald.
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-10)
    # and the pooled z^2 is Pearson's chi-square on the 2x2 table.
    chi2 = stats.chi2_contingency([[x_t, n_t - x_t], [x_c, n_c - x_c]], correction=False)
    assert result.p_value == pytest.approx(chi2.pvalue, rel=1e-9)


def test_relative_lift_delta_method_closed_form() -> None:
    c = ArmSummary.from_moments(2000, 10.0, 9.0)
    t = ArmSummary.from_moments(2100, 10.5, 16.0)
    result = fixed_horizon_test(c, t, relative=True, alpha=0.1)
    lift = 10.5 / 10.0 - 1.0
    var = 16.0 / 2100 / 10.0**2 + 10.5**2 * 9.0 / 2000 / 10.0**4
    assert result.estimate == pytest.approx(lift)
    assert result.std_error == pytest.approx(math.sqrt(var))
    assert result.ci_high - result.estimate == pytest.approx(stats.norm.ppf(0.95) * math.sqrt(var))
    # the p-value is the absolute-scale test of the same hypothesis
    assert result.p_value == pytest.approx(fixed_horizon_test(c, t).p_value)
    assert result.method is Method.DELTA_Z


def test_cuped_matches_closed_form_on_raw_data() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    xc, xt = rng.normal(5, 2, n), rng.normal(5, 2, n)
    yc = 1.0 + 0.8 * xc + rng.normal(0, 1, n)
    yt = 1.3 + 0.8 * xt + rng.normal(0, 1, n)
    c, t = (
        ArmSummary.from_values(yc.tolist(), xc.tolist()),
        ArmSummary.from_values(yt.tolist(), xt.tolist()),
    )
    # Deng et al. (2013) eq. (3) on the pooled sample.
    x_all, y_all = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = np.cov(x_all, y_all, ddof=1)[0, 1] / x_all.var(ddof=1)
    assert cuped_theta(c, t) == pytest.approx(theta, rel=1e-9)
    adj_c, adj_t = yc - theta * xc, yt - theta * xt
    oracle = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    result = fixed_horizon_test(c, t, cuped=True)
    assert result.method is Method.CUPED_WELCH_T
    assert result.estimate == pytest.approx(adj_t.mean() - adj_c.mean(), rel=1e-9)
    assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-6)
    ci = oracle.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-8)
    # eq. (4): variance shrinks by about (1 - rho^2)
    plain = fixed_horizon_test(c, t)
    assert result.std_error < 0.7 * plain.std_error


def test_cuped_relative_uses_full_delta_method() -> None:
    rng = np.random.default_rng(5)
    n = 20000
    xc, xt = rng.normal(5, 2, n), rng.normal(5, 2, n)
    yc, yt = 2 + xc + rng.normal(0, 1, n), 2.2 + xt + rng.normal(0, 1, n)
    c, t = (
        ArmSummary.from_values(yc.tolist(), xc.tolist()),
        ArmSummary.from_values(yt.tolist(), xt.tolist()),
    )
    result = fixed_horizon_test(c, t, cuped=True, relative=True)
    theta = cuped_theta(c, t)
    # Linearisation of (m_t - m_c) / ybar_c: per-unit influence values, then their variance.
    delta = (yt - theta * xt).mean() - (yc - theta * xc).mean()
    base = yc.mean()
    infl_t = (yt - theta * xt) / base
    infl_c = -(yc - theta * xc) / base - delta * yc / base**2
    var = infl_t.var(ddof=1) / n + infl_c.var(ddof=1) / n
    assert result.estimate == pytest.approx(delta / base)
    assert result.std_error == pytest.approx(math.sqrt(var), rel=1e-6)


def test_ratio_metric_delta_method_against_linearisation() -> None:
    rng = np.random.default_rng(8)

    def arm(rate: float, n: int) -> tuple[RatioSummary, np.ndarray, np.ndarray]:
        den = rng.poisson(3.0, n) + 1.0
        num = rng.binomial(den.astype(int), rate).astype(float)
        s = RatioSummary(n, num.sum(), (num**2).sum(), den.sum(), (den**2).sum(), (num * den).sum())
        return s, num, den

    c, nc, dc = arm(0.2, 4000)
    t, nt, dt = arm(0.22, 4000)
    result = fixed_horizon_test(c, t)
    r_c, r_t = nc.sum() / dc.sum(), nt.sum() / dt.sum()
    lin_c, lin_t = (nc - r_c * dc) / dc.mean(), (nt - r_t * dt) / dt.mean()
    se = math.sqrt(lin_c.var(ddof=1) / 4000 + lin_t.var(ddof=1) / 4000)
    assert result.estimate == pytest.approx(r_t - r_c)
    assert result.std_error == pytest.approx(se, rel=1e-9)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(r_t - r_c) / se), rel=1e-9)
    rel = fixed_horizon_test(c, t, relative=True)
    assert rel.estimate == pytest.approx(r_t / r_c - 1)


def test_expected_states_are_statuses() -> None:
    one = ArmSummary(1, 1.0, 1.0)
    many = ArmSummary.from_moments(10, 1.0, 1.0)
    assert fixed_horizon_test(one, many).status is TestStatus.NOT_ENOUGH_DATA
    flat = ArmSummary.from_moments(10, 1.0, 0.0)
    result = fixed_horizon_test(flat, flat)
    assert result.status is TestStatus.ZERO_VARIANCE and result.p_value == 1.0
    assert result.ci_low == -math.inf and not result.significant(0.05)
    zero = ArmSummary.from_moments(10, 0.0, 1.0)
    assert fixed_horizon_test(zero, many, relative=True).status is TestStatus.ZERO_BASELINE
    ratio_zero = RatioSummary(5, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert fixed_horizon_test(ratio_zero, ratio_zero).status is TestStatus.ZERO_BASELINE
    assert fixed_horizon_test(ArmSummary(0, 0, 0), many).status is TestStatus.NOT_ENOUGH_DATA


def test_misuse_raises() -> None:
    arm = ArmSummary.from_moments(10, 1.0, 1.0)
    ratio = RatioSummary(3, 1.0, 1.0, 3.0, 3.0, 1.0)
    with pytest.raises(ValidationError):
        fixed_horizon_test(arm, ratio)
    with pytest.raises(ValidationError):
        fixed_horizon_test(ratio, ratio, cuped=True)
    with pytest.raises(ValidationError):
        fixed_horizon_test(arm, arm, alpha=1.5)


@settings(max_examples=200, deadline=None)
@given(
    n_c=st.integers(2, 10**6), n_t=st.integers(2, 10**6),
    m_c=st.floats(-100, 100), m_t=st.floats(-100, 100),
    v_c=st.floats(1e-6, 1e4), v_t=st.floats(1e-6, 1e4),
    alpha=st.floats(0.001, 0.5), relative=st.booleans(),
)  # fmt: skip
def test_p_value_in_unit_interval_and_ci_contains_estimate(
    n_c: int,
    n_t: int,
    m_c: float,
    m_t: float,
    v_c: float,
    v_t: float,
    alpha: float,
    relative: bool,
) -> None:
    result = fixed_horizon_test(
        ArmSummary.from_moments(n_c, m_c, v_c),
        ArmSummary.from_moments(n_t, m_t, v_t),
        alpha=alpha,
        relative=relative,
    )
    assert 0.0 <= result.p_value <= 1.0
    if result.ok:
        assert result.ci_low <= result.estimate <= result.ci_high
    else:
        assert result.status in (TestStatus.ZERO_BASELINE, TestStatus.ZERO_VARIANCE)
