"""SRM (chi-square, sequential Dirichlet-multinomial) and multiple-comparison corrections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from abkit.core.stats import (
    SRM_THRESHOLD,
    Adjusted,
    TestStatus,
    adjust_p_values,
    bonferroni_alpha,
    sequential_srm_test,
    srm_test,
)
from abkit.errors import ValidationError

SAVVI = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "stats" / "savvi_golden.json").read_text()
)


@pytest.mark.parametrize(("counts", "weights"), [
    ([5000, 5100], [1, 1]), ([1000, 1100, 2050], [0.25, 0.25, 0.5]), ([480, 520], [0.5, 0.5]),
    ([10, 30], [0.2, 0.8]),
])  # fmt: skip
def test_chi_square_matches_scipy(counts: list[int], weights: list[float]) -> None:
    result = srm_test(counts, weights)
    w = np.array(weights) / sum(weights)
    oracle = stats.chisquare(counts, f_exp=w * sum(counts))
    assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-10)
    assert result.statistic == pytest.approx(oracle.statistic)
    assert result.mismatch == (oracle.pvalue < SRM_THRESHOLD)
    assert result.e_value is None


def test_srm_flags_real_mismatch_and_edge_cases() -> None:
    assert srm_test([5000, 5400], [1, 1]).mismatch
    assert not srm_test([5000, 5050], [1, 1]).mismatch
    empty = srm_test([0, 0], [1, 1])
    assert empty.status is TestStatus.NOT_ENOUGH_DATA and not empty.mismatch
    leak = srm_test([10, 5, 3], [1, 1, 0])  # units in an arm weighted 0
    assert leak.mismatch and leak.p_value == 0.0
    with pytest.raises(ValidationError):
        srm_test([1, 2], [1])
    with pytest.raises(ValidationError):
        srm_test([1, -2], [1, 1])
    with pytest.raises(ValidationError):
        srm_test([1, 2], [0, 0])


@pytest.mark.parametrize(
    "sequence", SAVVI["sequences"], ids=lambda s: f"{s['weights']}-k{s['concentration']}"
)
def test_sequential_srm_matches_savvi(sequence: dict[str, Any]) -> None:
    assert SAVVI["provenance"]["package"] == "savvi"
    running = 1.0
    for look in sequence["looks"]:
        result = sequential_srm_test(
            look["counts"],
            sequence["weights"],
            concentration=sequence["concentration"],
            previous_p_value=running,
        )
        assert result.e_value == pytest.approx(look["odds"], rel=1e-9)
        assert result.p_value == pytest.approx(min(running, look["p_value"]), rel=1e-9)
        running = result.p_value


def test_sequential_srm_detects_a_gross_mismatch_and_is_order_free() -> None:
    result = sequential_srm_test([5000, 5600], [1, 1])
    assert result.mismatch and result.e_value is not None and result.e_value > 1000
    assert sequential_srm_test([5600, 5000], [1, 1]).e_value == pytest.approx(result.e_value)
    assert sequential_srm_test([0, 0], [1, 1]).status is TestStatus.NOT_ENOUGH_DATA
    with pytest.raises(ValidationError):
        sequential_srm_test([1, 2], [1, 1], concentration=0.0)


def test_sequential_srm_is_anytime_valid_under_the_null() -> None:
    # 1000 A/A experiments, 25 looks of 200 units each: the running-min p rarely dips below 0.05.
    rng = np.random.default_rng(99)
    looks = rng.binomial(200, 0.5, (1000, 25))
    a = np.cumsum(looks, axis=1)
    b = np.cumsum(200 - looks, axis=1)
    hits = 0
    for i in range(1000):
        p = 1.0
        for k in range(25):
            p = sequential_srm_test(
                [int(a[i, k]), int(b[i, k])], [1, 1], previous_p_value=p
            ).p_value
        hits += p < 0.05
    assert hits / 1000 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 1000)


# -- Holm and Benjamini-Hochberg against their definitions ---------------------------------------
# The oracle below is written from the papers, independently of the implementation (which uses
# numpy for Holm and statsmodels for BH): with p_(1) <= ... <= p_(m) the sorted p-values,
#   Holm (1979):     adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))
#   BH (1995):       adjusted p_(i) = min_{j >= i} min(1, m p_(j) / j)
# and H_(i) is rejected when its adjusted p-value is <= alpha.


def _definition(p_values: list[float], method: str) -> list[float]:
    m = len(p_values)
    order = sorted(range(m), key=lambda k: (p_values[k], k))
    ranked = [p_values[k] for k in order]
    adjusted_ranked = []
    for i in range(1, m + 1):
        if method == "holm":
            value = max(min(1.0, (m - j + 1) * ranked[j - 1]) for j in range(1, i + 1))
        else:
            value = min(min(1.0, m * ranked[j - 1] / j) for j in range(i, m + 1))
        adjusted_ranked.append(value)
    adjusted = [0.0] * m
    for rank, k in enumerate(order):
        adjusted[k] = adjusted_ranked[rank]
    return adjusted


def _matches_definition(adjust: Any, p_values: list[float], method: str) -> bool:
    """Same adjusted p-values, and the same decisions wherever the adjusted value is not a
    floating-point tie with alpha (there the two roundings of ``i alpha / m`` may differ)."""
    want = _definition(p_values, method)
    got = adjust(p_values, method=method, alpha=0.05)
    if got.p_values != pytest.approx(tuple(want), abs=1e-12):
        return False
    return all(
        r == (w <= 0.05) for r, w in zip(got.reject, want, strict=True) if abs(w - 0.05) > 1e-12
    )


# Benjamini & Hochberg (1995), section 4: fifteen p-values of a multiple-endpoint trial; at
# q = 0.05 their procedure rejects the four smallest, while Bonferroni-type step-down (Holm)
# rejects three. The adjusted values below are worked out by hand from the definitions above.
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
           0.4262, 0.5719, 0.6528, 0.7590, 1.0000]  # fmt: skip


def test_bh_and_holm_on_the_published_example() -> None:
    bh = adjust_p_values(BH_1995, method="bh", alpha=0.05)
    holm = adjust_p_values(BH_1995, method="holm", alpha=0.05)
    assert sum(bh.reject) == 4 and bh.reject[:4] == (True,) * 4
    assert sum(holm.reject) == 3 and holm.reject[:3] == (True,) * 3
    # BH, m p_(j) / j and its running minimum from the top: p_(5..9) give 0.0603, 0.0695,
    # 0.063857, 0.0645, 0.0765, so p_(6) and p_(7) both adjust to 15 * 0.0298 / 7.
    assert bh.p_values[:9] == pytest.approx(
        (
            15 * 0.0001 / 1,
            15 * 0.0004 / 2,
            15 * 0.0019 / 3,
            15 * 0.0095 / 4,
            15 * 0.0201 / 5,
            15 * 0.0298 / 7,
            15 * 0.0298 / 7,
            15 * 0.0344 / 8,
            15 * 0.0459 / 9,
        )
    )
    # Holm: 15 * 0.0001, 14 * 0.0004, 13 * 0.0019, 12 * 0.0095, 11 * 0.0201, ...
    assert holm.p_values[:5] == pytest.approx((0.0015, 0.0056, 0.0247, 0.114, 0.2211))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.001, 0.01, 0.03, 1.0]), min_size=1,
             max_size=30),
    st.sampled_from(["holm", "bh"]),
)  # fmt: skip
def test_adjustments_match_their_definition(p_values: list[float], method: str) -> None:
    assert _matches_definition(adjust_p_values, p_values, method)


def test_the_definition_check_catches_an_off_by_one_rank() -> None:
    """A BH that divides by the rank plus one (a classic slip) is caught by the oracle."""

    def off_by_one(p_values: list[float], *, method: str, alpha: float) -> Any:
        m = len(p_values)
        order = sorted(range(m), key=lambda k: p_values[k])
        adjusted = [0.0] * m
        running = 1.0
        for rank in range(m, 0, -1):
            k = order[rank - 1]
            running = min(running, m * p_values[k] / (rank + 1))
            adjusted[k] = running
        return Adjusted(tuple(adjusted), tuple(a <= alpha for a in adjusted), method, alpha)

    assert _matches_definition(adjust_p_values, BH_1995, "bh")
    assert not _matches_definition(off_by_one, BH_1995, "bh")


def test_adjustment_validation_and_bonferroni() -> None:
    assert adjust_p_values([]).p_values == ()
    with pytest.raises(ValidationError):
        adjust_p_values([0.5], method="sidak")
    with pytest.raises(ValidationError):
        adjust_p_values([1.5])
    assert bonferroni_alpha(0.05, 4) == pytest.approx(0.0125)
    with pytest.raises(ValidationError):
        bonferroni_alpha(0.05, 0)
