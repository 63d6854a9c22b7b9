"""Always-valid mSPRT: gbstats parity, closed forms, monitor state, one-sided variant."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from abkit.core.stats import (
    ArmSummary,
    MonitorState,
    RatioSummary,
    SequentialMonitor,
    TestStatus,
    sequential_test,
)
from abkit.core.stats.sequential import mixture_rho_squared
from abkit.errors import ValidationError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "stats"
GBSTATS = json.loads((FIXTURES / "gbstats_golden.json").read_text())


def _summary(kind: str, arm: dict[str, Any]) -> ArmSummary | RatioSummary:
    return RatioSummary(**arm) if kind == "ratio" else ArmSummary(**arm)


def test_gbstats_provenance_is_recorded() -> None:
    assert GBSTATS["provenance"]["package"] == "gbstats"
    assert GBSTATS["provenance"]["version"] == "0.8.0"
    assert len(GBSTATS["cases"]) >= 25


@pytest.mark.parametrize(
    "case",
    GBSTATS["cases"],
    ids=lambda c: (
        f"{c['dataset']}-{c['alpha']}-{c['n_star']}-{'rel' if c['relative'] else 'abs'}-{c['null']}"
    ),
)
def test_n_star_reproduces_gbstats(case: dict[str, Any]) -> None:
    kind = case["kind"]
    result = sequential_test(
        _summary(kind, case["control"]),
        _summary(kind, case["treatment"]),
        alpha=case["alpha"],
        n_star=case["n_star"],
        null=case["null"],
        relative=case["relative"],
        cuped=kind == "cuped",
    )
    expected = case["expected"]
    assert result.status is TestStatus.OK and expected["error_message"] is None
    for name in ("estimate", "ci_low", "ci_high", "p_value"):
        assert getattr(result, name) == pytest.approx(expected[name], rel=1e-9, abs=1e-14), name


def test_e_value_is_the_normal_mixture_likelihood_ratio() -> None:
    # Johari et al.: Lambda = integral of N(d; delta, v) N(delta; 0, tau^2) / N(d; 0, v).
    c = ArmSummary.from_moments(3000, 1.00, 4.0)
    t = ArmSummary.from_moments(3000, 1.12, 4.0)
    tau = 0.05
    result = sequential_test(c, t, tau=tau)
    d, v = 0.12, 4.0 / 3000 * 2
    numerator, _ = integrate.quad(
        lambda delta: stats.norm.pdf(d, delta, math.sqrt(v)) * stats.norm.pdf(delta, 0, tau),
        -1,
        1,
        epsabs=1e-14,
    )
    assert result.e_value == pytest.approx(numerator / stats.norm.pdf(d, 0, math.sqrt(v)), rel=1e-7)
    assert result.e_value is not None
    assert result.p_value == pytest.approx(min(1.0, 1.0 / result.e_value))


def test_confidence_sequence_inverts_the_test() -> None:
    c = ArmSummary.from_moments(5000, 2.0, 1.0)
    t = ArmSummary.from_moments(5200, 2.06, 1.1)
    result = sequential_test(c, t, n_star=8000)
    at_low = sequential_test(c, t, n_star=8000, null=result.ci_low)
    at_high = sequential_test(c, t, n_star=8000, null=result.ci_high)
    # On the boundary of the sequence the e-value is exactly 1/alpha.
    assert at_low.e_value == pytest.approx(20.0, rel=1e-9)
    assert at_high.e_value == pytest.approx(20.0, rel=1e-9)
    assert (result.p_value < 0.05) == (result.ci_low > 0.0 or result.ci_high < 0.0)


def test_tau_and_n_star_agree_when_tau_matches_the_tuning() -> None:
    c = ArmSummary.from_moments(4000, 5.0, 2.0)
    t = ArmSummary.from_moments(4000, 5.1, 2.0)
    v = 2.0 / 4000 * 2
    tau = math.sqrt(mixture_rho_squared(0.05, 10000) * 8000 * v)  # tau^2 = rho^2 N v
    a = sequential_test(c, t, tau=tau)
    b = sequential_test(c, t, n_star=10000)
    assert (a.p_value, a.ci_low, a.ci_high) == pytest.approx(
        (b.p_value, b.ci_low, b.ci_high), rel=1e-12
    )


def test_default_tuning_is_gbstats_default() -> None:
    c, t = ArmSummary.from_moments(100, 0.0, 1.0), ArmSummary.from_moments(100, 0.3, 1.0)
    assert sequential_test(c, t) == sequential_test(c, t, n_star=5000)


def test_sequence_is_wider_than_the_fixed_horizon_interval() -> None:
    c, t = ArmSummary.from_moments(10000, 0.0, 1.0), ArmSummary.from_moments(10000, 0.03, 1.0)
    seq = sequential_test(c, t, n_star=20000)
    half = seq.ci_high - seq.estimate
    assert half > stats.norm.ppf(0.975) * seq.std_error


def test_one_sided_closed_form_and_consistency() -> None:
    c = ArmSummary.from_moments(6000, 1.0, 1.0)
    t = ArmSummary.from_moments(6000, 1.05, 1.0)
    alpha, n_star = 0.05, 12000
    result = sequential_test(c, t, sides=1, alpha=alpha, n_star=n_star)
    v = 2.0 / 6000
    rho2 = (-2 * math.log(2 * alpha) + math.log(1 - 2 * math.log(2 * alpha))) / n_star
    r = 12000 * rho2
    width = math.sqrt(v * 2 * (1 + r) / r * math.log(1 + math.sqrt(1 + r) / (2 * alpha)))
    assert result.ci_low == pytest.approx(0.05 - width, rel=1e-10)
    assert result.ci_high == math.inf
    exponent = r * (0.05**2 / v) / (2 * (1 + r))
    assert result.e_value == pytest.approx(2 * math.expm1(exponent) / math.sqrt(1 + r), rel=1e-10)
    assert (result.p_value < alpha) == (result.ci_low > 0.0)
    # the bound on the boundary: e-value exactly 1/alpha
    assert sequential_test(
        c, t, sides=1, alpha=alpha, n_star=n_star, null=result.ci_low
    ).e_value == pytest.approx(1 / alpha, rel=1e-9)


def test_one_sided_e_value_is_below_the_exact_half_normal_mixture() -> None:
    # Howard et al.'s closed form is conservative: never above the exact mixture LR, so valid.
    # In standardised units (mu = delta / sqrt(v)): LR = int_0^inf e^{mu z - mu^2/2} 2 phi(mu; r).
    v = 0.5  # n = 2 per arm with per-unit variance 0.5: v = 0.25 + 0.25
    for z in (0.1, 1.0, 2.5, 4.0):
        for r in (0.01, 1.0, 50.0):
            exact, _ = integrate.quad(
                lambda mu, z=z, r=r: (
                    math.exp(mu * z - mu**2 / 2) * 2 * stats.norm.pdf(mu, 0, math.sqrt(r))
                ),
                0,
                np.inf,
            )
            c = ArmSummary.from_moments(2, 0.0, 0.5)
            t = ArmSummary.from_moments(2, z * math.sqrt(v), 0.5)
            got = sequential_test(c, t, sides=1, tau=math.sqrt(r * v)).e_value
            assert got is not None and got <= exact * (1 + 1e-9)
            assert got >= exact - 2.0 / math.sqrt(1 + r)  # ... and loses at most that


def test_one_sided_wrong_direction_gives_no_evidence() -> None:
    c, t = ArmSummary.from_moments(1000, 1.0, 1.0), ArmSummary.from_moments(1000, 0.8, 1.0)
    result = sequential_test(c, t, sides=1)
    assert result.p_value == 1.0 and result.e_value == 0.0


def test_non_inferiority_margin_direction() -> None:
    # Treatment 0.5 % worse, margin 2 %: non-inferiority is shown (reject H0: lift <= -2 %).
    c = ArmSummary.from_moments(200000, 10.0, 4.0)
    t = ArmSummary.from_moments(200000, 9.95, 4.0)
    result = sequential_test(c, t, sides=1, null=-0.02, relative=True)
    assert result.ok and result.p_value < 0.05 and result.ci_low > -0.02
    worse = sequential_test(c, t, sides=1, null=-0.001, relative=True)
    assert worse.p_value > 0.05


def test_monitor_keeps_running_minimum_and_intersection() -> None:
    rng = np.random.default_rng(2)
    monitor = SequentialMonitor(n_star=4000)
    sums = np.zeros(4)
    last = None
    singles = []
    for _ in range(20):
        y_c, y_t = rng.normal(0, 1, 200), rng.normal(0.05, 1, 200)
        sums += [y_c.sum(), (y_c**2).sum(), y_t.sum(), (y_t**2).sum()]
        n = 200 * (_ + 1)
        c, t = ArmSummary(n, sums[0], sums[1]), ArmSummary(n, sums[2], sums[3])
        last = monitor.update(c, t)
        singles.append(sequential_test(c, t, n_star=4000))
    assert last is not None
    assert last.p_value == pytest.approx(min(s.p_value for s in singles))
    assert last.ci_low == pytest.approx(max(s.ci_low for s in singles))
    assert last.ci_high == pytest.approx(min(s.ci_high for s in singles))
    assert monitor.state.looks == 20
    # state survives a restart
    again = SequentialMonitor(n_star=4000, state=monitor.state)
    assert again.state == monitor.state


def test_monitor_flags_empty_intersection() -> None:
    monitor = SequentialMonitor(tau=0.1, state=MonitorState(3, 0.2, 5.0, 6.0, 10))
    result = monitor.update(
        ArmSummary.from_moments(100, 0.0, 1.0), ArmSummary.from_moments(100, 0.0, 1.0)
    )
    assert result.status is TestStatus.EMPTY_CONFIDENCE_SEQUENCE
    assert result.ci_low > result.ci_high  # kept visible, not reset


def test_monitor_skips_unusable_looks_and_rejects_shrinking_data() -> None:
    monitor = SequentialMonitor()
    early = monitor.update(ArmSummary(1, 1.0, 1.0), ArmSummary(1, 1.0, 1.0))
    assert early.status is TestStatus.NOT_ENOUGH_DATA and early.e_value == 1.0
    assert monitor.state.looks == 0
    monitor.update(ArmSummary.from_moments(50, 0, 1), ArmSummary.from_moments(50, 0, 1))
    with pytest.raises(ValidationError):
        monitor.update(ArmSummary.from_moments(10, 0, 1), ArmSummary.from_moments(10, 0, 1))


@pytest.mark.parametrize("kwargs", [
    {"tau": 1.0, "n_star": 10.0}, {"tau": -1.0}, {"n_star": 0.0}, {"sides": 3}, {"alpha": 0.0},
    {"sides": 1, "alpha": 0.6}, {"null": math.nan},
])  # fmt: skip
def test_invalid_configuration_raises(kwargs: dict[str, Any]) -> None:
    arm = ArmSummary.from_moments(10, 0.0, 1.0)
    with pytest.raises(ValidationError):
        sequential_test(arm, arm, **kwargs)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 10**6), m_c=st.floats(-10, 10), m_t=st.floats(-10, 10),
    v=st.floats(1e-4, 100), sides=st.sampled_from([1, 2]), n_star=st.floats(10, 1e7),
)  # fmt: skip
# Found by this test: a positive z so small that z^2 is subnormal made log(Lambda) < -709 and
# exp(-log Lambda) overflow; p is 1 whenever Lambda <= 1.
@example(n=2, m_c=0.0, m_t=7.31986783796801e-157, v=1.0, sides=1, n_star=10.0)
def test_properties(n: int, m_c: float, m_t: float, v: float, sides: int, n_star: float) -> None:
    result = sequential_test(
        ArmSummary.from_moments(n, m_c, v),
        ArmSummary.from_moments(n, m_t, v),
        sides=sides,
        n_star=n_star,
    )
    assert 0.0 <= result.p_value <= 1.0
    assert result.e_value is not None and result.e_value >= 0.0
    if result.ok:
        assert result.ci_low <= result.estimate <= result.ci_high


def test_alternative_less_mirrors_greater_exactly() -> None:
    # H1: delta < null on the data equals H1: -delta > -null on the negated data (absolute
    # scale, where negating the arms flips the sign of the difference).
    from abkit.core.stats import ArmSummary, sequential_test

    control = ArmSummary.from_moments(4000, 10.0, 9.0)
    treatment = ArmSummary.from_moments(4000, 9.7, 9.5)
    less = sequential_test(control, treatment, sides=1, null=0.1, alternative="less", n_star=8000)
    mirrored = sequential_test(
        control.negated(), treatment.negated(), sides=1, null=-0.1, n_star=8000
    )
    assert less.p_value == pytest.approx(mirrored.p_value, rel=1e-12)
    assert less.ci_high == pytest.approx(-mirrored.ci_low, rel=1e-12)
    assert less.ci_low == -math.inf and less.estimate == pytest.approx(-0.3)
    # For a relative lift negating the arms does not flip anything; "less" does.
    lift_less = sequential_test(
        control, treatment, sides=1, null=0.0, relative=True, alternative="less", n_star=8000
    )
    lift_greater = sequential_test(
        control, treatment, sides=1, null=0.0, relative=True, n_star=8000
    )
    assert lift_less.p_value < 0.05 < lift_greater.p_value
