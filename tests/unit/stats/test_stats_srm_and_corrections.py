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
from statsmodels.stats.multitest import multipletests

from abkit.core.stats import (
    SRM_THRESHOLD,
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


@settings(max_examples=40, deadline=None)  # statsmodels' Holm oracle runs gc.collect() per call
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.sampled_from(["holm", "bh"]))
def test_adjustments_match_statsmodels(p_values: list[float], method: str) -> None:
    result = adjust_p_values(p_values, method=method, alpha=0.05)
    reject, adjusted, _, _ = multipletests(
        p_values, alpha=0.05, method="holm" if method == "holm" else "fdr_bh"
    )
    assert result.p_values == pytest.approx(tuple(adjusted))
    assert result.reject == tuple(bool(r) for r in reject)


def test_adjustment_validation_and_bonferroni() -> None:
    assert adjust_p_values([]).p_values == ()
    with pytest.raises(ValidationError):
        adjust_p_values([0.5], method="sidak")
    with pytest.raises(ValidationError):
        adjust_p_values([1.5])
    assert bonferroni_alpha(0.05, 4) == pytest.approx(0.0125)
    with pytest.raises(ValidationError):
        bonferroni_alpha(0.05, 0)
