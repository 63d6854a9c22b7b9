"""Group-sequential boundaries against published tables, a reference package and Monte Carlo."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import special

from abkit.core.stats import (
    ArmSummary,
    GroupSequentialDesign,
    GroupSequentialMonitor,
    TestStatus,
    alpha_spent,
    classical_boundaries,
    crossing_probabilities,
    spending_boundaries,
)
from abkit.errors import ValidationError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "stats"
TABLES = json.loads((FIXTURES / "published_tables.json").read_text())
SPOTIFY = json.loads((FIXTURES / "spotify_golden.json").read_text())


@pytest.mark.parametrize("alpha", ["0.05", "0.01", "0.10"])
def test_pocock_constants_match_jennison_turnbull_table_2_1(alpha: str) -> None:
    table = TABLES["jennison_turnbull_2000_table_2_1_pocock"]
    for k, published in zip(table["K"], table[f"alpha_{alpha}"], strict=True):
        bounds = classical_boundaries(k, alpha=float(alpha), kind="pocock")
        assert all(b == bounds[0] for b in bounds)
        assert round(bounds[0], 3) == pytest.approx(published, abs=1e-9), k


@pytest.mark.parametrize("alpha", ["0.05", "0.01", "0.10"])
def test_obrien_fleming_constants_match_jennison_turnbull_table_2_3(alpha: str) -> None:
    table = TABLES["jennison_turnbull_2000_table_2_3_obrien_fleming"]
    for k, published in zip(table["K"], table[f"alpha_{alpha}"], strict=True):
        bounds = classical_boundaries(k, alpha=float(alpha), kind="obf")
        assert round(bounds[-1], 3) == pytest.approx(published, abs=1e-9), k  # C_B = c_K
        assert bounds[0] == pytest.approx(bounds[-1] * math.sqrt(k))


def test_lan_demets_obf_five_looks() -> None:
    example = TABLES["lan_demets_obf_5_looks"]
    bounds = spending_boundaries(example["information_fractions"], alpha=0.05, spending="obf")
    assert [round(b, 3) for b in bounds] == example["boundaries"]


@pytest.mark.parametrize("case", SPOTIFY["cases"], ids=lambda c: f"rho{c['rho']}-a{c['alpha']}")
def test_power_family_matches_spotify_confidence_ldbounds_port(case: dict[str, Any]) -> None:
    bounds = spending_boundaries(
        case["information_fractions"], alpha=case["alpha"], spending=case["rho"], sides=1
    )
    # the reference uses a trapezoid grid with h = 0.05 and a 1e-7 bisection: agree to 2e-4.
    assert bounds == pytest.approx(case["boundaries"], abs=2e-4)
    assert bounds[0] == pytest.approx(case["boundaries"][0], abs=1e-9)  # first look is exact


@pytest.mark.parametrize("spending", ["obf", "pocock", 1.0, 2.0, 3.0])
@pytest.mark.parametrize("sides", [1, 2])
def test_boundaries_spend_exactly_alpha(spending: str | float, sides: int) -> None:
    fractions = [0.13, 0.3, 0.52, 0.8, 1.0]
    bounds = spending_boundaries(fractions, alpha=0.05, spending=spending, sides=sides)
    probs = crossing_probabilities(fractions, bounds, sides=sides)
    cumulative = np.cumsum([up + low for up, low in probs])
    expected = [sides * alpha_spent(t, alpha=0.05 / sides, spending=spending) for t in fractions]
    assert cumulative == pytest.approx(expected, rel=1e-8, abs=1e-14)


def test_monte_carlo_total_crossing_probability_is_alpha() -> None:
    rng = np.random.default_rng(2024)
    fractions = np.array([0.2, 0.45, 0.7, 0.85, 1.0])
    bounds = np.array(spending_boundaries(fractions.tolist(), alpha=0.05, spending="pocock"))
    reps = 200_000
    increments = rng.normal(0.0, 1.0, (reps, fractions.size)) * np.sqrt(
        np.diff(fractions, prepend=0)
    )
    z = np.cumsum(increments, axis=1) / np.sqrt(fractions)
    rate = np.mean(np.any(np.abs(z) >= bounds, axis=1))
    se = math.sqrt(0.05 * 0.95 / reps)
    assert abs(rate - 0.05) < 4 * se


def test_design_extends_without_recomputing_and_matches_batch() -> None:
    fractions = [0.1, 0.25, 0.4, 0.66, 0.9, 1.0]
    design = GroupSequentialDesign(alpha=0.05, spending=2.0)
    incremental = []
    for t in fractions:
        before = list(design.boundaries)
        incremental.append(design.add_look(t))
        assert design.boundaries[: len(before)] == before  # old looks untouched
    assert incremental == pytest.approx(
        list(spending_boundaries(fractions, spending=2.0)), rel=1e-12
    )


def test_final_look_spends_all_remaining_alpha() -> None:
    design = GroupSequentialDesign(alpha=0.05, spending="obf")
    design.add_look(0.3)
    design.add_look(0.6)
    last = design.add_look(0.75, final=True)
    probs = crossing_probabilities(design.fractions, design.boundaries)
    assert sum(u + low for u, low in probs) == pytest.approx(0.05, rel=1e-8)
    assert last < special.ndtri(1 - 0.0125) + 1.0
    with pytest.raises(ValidationError):
        design.add_look(0.9)


def test_grid_refinement_does_not_move_boundaries() -> None:
    from abkit.core.stats import group_sequential as gs

    fractions = [i / 20 for i in range(1, 21)]
    coarse = spending_boundaries(fractions, spending="pocock")
    old = gs._STEPS_PER_SD, gs._MAX_STEP
    try:
        gs._STEPS_PER_SD, gs._MAX_STEP = 12.0, 0.02
        fine = spending_boundaries(fractions, spending="pocock")
    finally:
        gs._STEPS_PER_SD, gs._MAX_STEP = old
    assert coarse == pytest.approx(fine, abs=1e-5)


@pytest.mark.parametrize(("fractions", "kwargs"), [
    ([0.5, 0.4], {}), ([0.0, 1.0], {}), ([0.5], {"spending": "linear"}), ([0.5], {"sides": 3}),
    ([0.5], {"spending": -1.0}), ([0.5], {"alpha": 1.0}),
])  # fmt: skip
def test_invalid_designs_raise(fractions: list[float], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spending_boundaries(fractions, **kwargs)


def test_classical_boundaries_validation() -> None:
    with pytest.raises(ValidationError):
        classical_boundaries(0)
    with pytest.raises(ValidationError):
        classical_boundaries(3, kind="haybittle")


def _arm(n: int, mean: float) -> ArmSummary:
    return ArmSummary.from_moments(n, mean, 1.0)


def test_monitor_rejects_at_the_boundary_and_reports_repeated_ci() -> None:
    monitor = GroupSequentialMonitor(4000, alpha=0.05, spending="obf")
    first = monitor.update(_arm(400, 0.0), _arm(400, 0.05))
    assert first.information_fraction == pytest.approx(0.2)
    assert first.boundary == pytest.approx(spending_boundaries([0.2])[0])
    assert not first.reject
    second = monitor.update(_arm(1000, 0.0), _arm(1000, 0.2))
    assert second.look == 2 and second.reject
    assert second.ci_low == pytest.approx(second.estimate - second.boundary * second.std_error)
    assert second.nominal_alpha == pytest.approx(2 * special.ndtr(-second.boundary))
    assert second.nominal_p_value < second.nominal_alpha


def test_monitor_one_sided_and_statuses() -> None:
    monitor = GroupSequentialMonitor(1000, sides=1, spending="pocock")
    early = monitor.update(ArmSummary(1, 0.0, 0.0), ArmSummary(1, 1.0, 1.0))
    assert early.status is TestStatus.NOT_ENOUGH_DATA and not early.reject
    assert monitor.design.boundaries == []
    result = monitor.update(_arm(500, 0.0), _arm(500, -0.5))
    assert result.ci_high == math.inf and not result.reject  # wrong direction never rejects
    same = monitor.update(_arm(500, 0.0), _arm(500, -0.5))
    assert same.boundary == result.boundary and len(monitor.design.boundaries) == 1
    with pytest.raises(ValidationError):
        GroupSequentialMonitor(1)


def test_monitor_state_survives_a_restart() -> None:
    from abkit.core.stats import ArmSummary, GroupSequentialMonitor

    looks = [(500, 0.02), (1000, 0.03), (1500, 0.05), (2000, 0.04)]
    first = GroupSequentialMonitor(4000, spending="obf")
    restarted = None
    results = []
    for i, (n, diff) in enumerate(looks):
        control = ArmSummary.from_moments(n, 1.0, 1.0)
        treatment = ArmSummary.from_moments(n, 1.0 + diff, 1.0)
        if i == 2:  # the worker restarts: a new monitor from the persisted state
            restarted = GroupSequentialMonitor(4000, spending="obf", state=first.state)
        monitor = restarted if restarted is not None else first
        results.append(monitor.update(control, treatment))
    uninterrupted = GroupSequentialMonitor(4000, spending="obf")
    for (n, diff), got in zip(looks, results, strict=True):
        want = uninterrupted.update(
            ArmSummary.from_moments(n, 1.0, 1.0), ArmSummary.from_moments(n, 1.0 + diff, 1.0)
        )
        assert got.boundary == pytest.approx(want.boundary, rel=1e-12)
        assert got.look == want.look
