"""ArmSummary / RatioSummary: the SQL data contract validates and derives moments correctly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core.stats import ArmSummary, RatioSummary
from abkit.errors import ValidationError


def test_moments_match_numpy() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(3.0, 2.0, 500)
    x = 0.5 * y + rng.normal(0.0, 1.0, 500)
    arm = ArmSummary.from_values(y.tolist(), x.tolist())
    assert arm.n == 500
    assert arm.mean == pytest.approx(y.mean(), rel=1e-12)
    assert arm.variance == pytest.approx(y.var(ddof=1), rel=1e-10)
    assert arm.x_variance == pytest.approx(x.var(ddof=1), rel=1e-10)
    assert arm.xy_covariance == pytest.approx(np.cov(x, y, ddof=1)[0, 1], rel=1e-10)


@given(
    n=st.integers(min_value=2, max_value=10**7),
    mean=st.floats(min_value=-1e4, max_value=1e4),
    sd=st.floats(min_value=0.0, max_value=1e3),
)
def test_from_moments_round_trip(n: int, mean: float, sd: float) -> None:
    arm = ArmSummary.from_moments(n, mean, sd * sd)
    assert arm.mean == pytest.approx(mean, rel=1e-9, abs=1e-9)
    # The centred second moment is recovered up to cancellation in sum_sq - sum^2/n: a few ulps
    # of sum_sq = n (mean^2 + ...) spread over n - 1 degrees of freedom.
    cancellation = 64 * np.finfo(float).eps * (mean * mean + sd * sd) * n / (n - 1)
    assert arm.variance == pytest.approx(sd * sd, rel=1e-9, abs=cancellation)


def test_binary_detection_and_constructor() -> None:
    arm = ArmSummary.from_proportion(100, 7)
    assert arm.is_binary and arm.mean == 0.07
    assert arm.variance == pytest.approx(0.07 * 0.93 * 100 / 99)
    assert not ArmSummary.from_values([0.0, 0.5, 1.0]).is_binary
    assert not ArmSummary(0, 0.0, 0.0).is_binary


def test_small_arms_have_nan_moments_not_errors() -> None:
    assert math.isnan(ArmSummary(0, 0.0, 0.0).mean)
    assert math.isnan(ArmSummary(1, 2.0, 4.0).variance)
    assert ArmSummary.from_moments(1, 2.0, 0.0).sum == 2.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": -1, "sum": 0.0, "sum_sq": 0.0}, "n"),
        ({"n": 2.5, "sum": 0.0, "sum_sq": 0.0}, "n"),
        ({"n": True, "sum": 0.0, "sum_sq": 0.0}, "n"),
        ({"n": 3, "sum": math.nan, "sum_sq": 0.0}, "sum"),
        ({"n": 3, "sum": 1.0, "sum_sq": math.inf}, "sum_sq"),
        ({"n": 3, "sum": "1", "sum_sq": 1.0}, "sum"),
        ({"n": 3, "sum": 3.0, "sum_sq": 2.0}, "sum_sq"),  # below sum^2 / n
        ({"n": 0, "sum": 1.0, "sum_sq": 1.0}, "sum_sq"),
        (
            {"n": 2, "sum": 2.0, "sum_sq": 4.0, "x_sum": 2.0, "x_sum_sq": 4.0, "xy_sum": 9.0},
            "xy_sum",
        ),
    ],
)
def test_impossible_summaries_are_rejected(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ArmSummary(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rounding_in_sum_sq_is_tolerated() -> None:
    # 1e6 units all equal to 0.1: SQL may return sum_sq a hair below sum^2/n.
    n, value = 10**6, 0.1
    arm = ArmSummary(n, n * value, n * value * value * (1 - 1e-13))
    assert arm.variance == 0.0


@pytest.mark.parametrize(
    ("args", "field"),
    [((2, 1.0, -1.0), "variance"), ((1, 1.0, 2.0), "variance"), ((0, 1.0, 0.0), "mean")],
)
def test_from_moments_validation(args: tuple[int, float, float], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ArmSummary.from_moments(*args)
    assert info.value.field == field


def test_from_proportion_validation() -> None:
    with pytest.raises(ValidationError):
        ArmSummary.from_proportion(5, 6)


def test_negated_flips_mean_and_covariance() -> None:
    arm = ArmSummary.from_values([1.0, 2.0, 4.0], [0.0, 1.0, 1.0])
    neg = arm.negated()
    assert neg.mean == -arm.mean and neg.variance == pytest.approx(arm.variance)
    assert neg.xy_covariance == pytest.approx(-arm.xy_covariance)


def test_ratio_summary_delta_variance_matches_linearisation() -> None:
    rng = np.random.default_rng(3)
    den = rng.poisson(4.0, 2000) + 1.0
    num = rng.binomial(den.astype(int), 0.3).astype(float)
    arm = RatioSummary(
        2000, num.sum(), (num**2).sum(), den.sum(), (den**2).sum(), (num * den).sum()
    )
    ratio = num.sum() / den.sum()
    # Delta method == variance of the linearised per-unit values (num - R den) / mean(den).
    linear = (num - ratio * den) / den.mean()
    assert arm.mean == pytest.approx(ratio)
    assert arm.variance == pytest.approx(linear.var(ddof=1), rel=1e-9)
    assert arm.covariance == pytest.approx(np.cov(num, den, ddof=1)[0, 1], rel=1e-9)
    assert arm.numerator.mean == pytest.approx(num.mean())


def test_ratio_summary_validation() -> None:
    with pytest.raises(ValidationError) as info:
        RatioSummary(2, 2.0, 2.0, 2.0, 2.0, 5.0)
    assert info.value.field == "cross_sum"
    assert math.isnan(RatioSummary(3, 1.0, 1.0, 0.0, 0.0, 0.0).mean)


def test_summaries_are_frozen() -> None:
    arm = ArmSummary(2, 1.0, 1.0)
    with pytest.raises(AttributeError):
        arm.n = 3  # type: ignore[misc]
