"""Planning: fixed-horizon sample size/power, sequential inflation vs closed forms and tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from abkit.core.stats import (
    classical_boundaries,
    power_binary,
    power_continuous,
    sample_size_binary,
    sample_size_continuous,
    sequential_inflation,
)
from abkit.core.stats.planning import boundary_inflation
from abkit.errors import ValidationError

TABLES = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "stats" / "published_tables.json").read_text()
)


def test_continuous_sample_size_against_normal_closed_form() -> None:
    size = sample_size_continuous(0.1, 1.0, alpha=0.05, power=0.8)
    # n = 2 (z_{0.975} + z_{0.8})^2 / d^2 = 1569.8 (normal); the t version needs ~1 more unit.
    normal = 2 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 / 0.1**2
    assert size.control == size.treatment
    assert math.ceil(normal) <= size.control <= math.ceil(normal) + 2
    assert power_continuous(0.1, 1.0, size.control) >= 0.8
    assert power_continuous(0.1, 1.0, size.control - 3) < 0.8
    unequal = sample_size_continuous(0.1, 1.0, ratio=2.0)
    assert unequal.treatment == pytest.approx(2 * unequal.control, abs=2)


def test_binary_sample_size_against_arcsine_closed_form() -> None:
    size = sample_size_binary(0.10, 0.01)  # 10 % -> 11 %
    h = 2 * math.asin(math.sqrt(0.11)) - 2 * math.asin(math.sqrt(0.10))
    n = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / h) ** 2  # Cohen's h, equal arms
    assert abs(size.control - math.ceil(n)) <= 1
    assert sample_size_binary(0.10, 0.10, relative=True) == size
    assert power_binary(0.10, 0.01, size.control) == pytest.approx(0.8, abs=1e-3)
    assert size.total == 2 * size.control


@pytest.mark.parametrize(("args", "kwargs"), [
    ((0.0, 1.0), {}), ((0.1, 0.0), {}), ((0.1, 1.0), {"power": 1.0}), ((0.1, 1.0), {"alpha": 0}),
])  # fmt: skip
def test_planning_validation(args: tuple[float, float], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        sample_size_continuous(*args, **kwargs)


def test_binary_validation() -> None:
    with pytest.raises(ValidationError):
        sample_size_binary(1.2, 0.1)
    with pytest.raises(ValidationError):
        sample_size_binary(0.95, 0.1)


@pytest.mark.parametrize(
    ("kind", "power"), [("pocock", 0.8), ("pocock", 0.9), ("obf", 0.8), ("obf", 0.9)]
)
def test_inflation_factors_match_jennison_turnbull(kind: str, power: float) -> None:
    table = TABLES["jennison_turnbull_2000_tables_2_2_2_4_inflation"]
    for k, published in zip(table["K"], table[f"{kind}_power_{power}"], strict=True):
        bounds = classical_boundaries(k, kind=kind)
        r = boundary_inflation([(i + 1) / k for i in range(k)], bounds, power=power)
        assert r.max_sample_ratio == pytest.approx(published, abs=2e-3), (kind, k)


def test_sequential_inflation_orders_the_modes() -> None:
    obf = sequential_inflation("group_sequential", looks=5, spending="obf")
    pocock = sequential_inflation("group_sequential", looks=5, spending="pocock")
    msprt = sequential_inflation("msprt", looks=20)
    assert 1.0 < obf.max_sample_ratio < pocock.max_sample_ratio < msprt.max_sample_ratio
    assert obf.expected_ratio_h1 < 1.0 and pocock.expected_ratio_h1 < 1.0
    assert obf.expected_ratio_h0 <= obf.max_sample_ratio
    with pytest.raises(ValidationError):
        sequential_inflation("bayes")
