"""Assignment: the split is fair, ramps never move units, each reason is reachable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from abkit.core.assignment import Catalog, CompiledExperiment, assign
from abkit.core.model import Arm, Experiment, ExperimentStatus, Holdout, LayerSegment, Reason
from abkit.core.targeting import parse_condition
from abkit.errors import NotFoundError, ValidationError

ARMS = (Arm("control", "v1", 0.5, control=True), Arm("treatment", "v2", 0.5))


def running(key: str = "exp", **kwargs: object) -> Experiment:
    kwargs.setdefault("arms", ARMS)
    kwargs.setdefault("status", ExperimentStatus.RUNNING)
    return Experiment(key, **kwargs)  # type: ignore[arg-type]


def test_one_million_units_split_fairly() -> None:
    compiled = CompiledExperiment(running())
    n = 1_000_000
    treated = sum(compiled.assign(f"user-{i}").arm_key == "treatment" for i in range(n))
    share = treated / n
    assert abs(share - 0.5) <= 0.003
    p = stats.chisquare([treated, n - treated], [n / 2, n / 2]).pvalue
    assert p > 0.001


def test_uneven_weights_match_their_shares() -> None:
    arms = (Arm("a", "v1", 0.2, control=True), Arm("b", "v2", 0.3), Arm("c", "v3", 0.5))
    compiled = CompiledExperiment(running(arms=arms))
    n = 200_000
    counts = Counter(compiled.assign(f"u{i}").arm_key for i in range(n))
    observed = [counts["a"], counts["b"], counts["c"]]
    assert stats.chisquare(observed, [0.2 * n, 0.3 * n, 0.5 * n]).pvalue > 0.001


def test_raising_coverage_only_adds_units_and_moves_none() -> None:
    low = CompiledExperiment(running(coverage=0.1))
    high = CompiledExperiment(running(coverage=0.5))
    units = [f"user-{i}" for i in range(100_000)]
    before = {u: low.assign(u) for u in units}
    after = {u: high.assign(u) for u in units}
    moved = sum(
        1 for u in units if before[u].in_experiment and before[u].arm_key != after[u].arm_key
    )
    left = sum(1 for u in units if before[u].in_experiment and not after[u].in_experiment)
    entered = sum(1 for u in units if after[u].in_experiment)
    assert moved == 0
    assert left == 0
    assert abs(entered / len(units) - 0.5) < 0.01
    assert abs(sum(b.in_experiment for b in before.values()) / len(units) - 0.1) < 0.005


def test_changing_one_experiments_salt_does_not_move_units_of_another() -> None:
    a = CompiledExperiment(running("a"))
    b_before = CompiledExperiment(running("b"))
    a_resalted = CompiledExperiment(running("a", salt="a-reshuffled"))
    units = [f"user-{i}" for i in range(20_000)]
    assert [b_before.assign(u).arm_key for u in units] == [
        CompiledExperiment(running("b")).assign(u).arm_key for u in units
    ]
    # The resalted experiment reshuffles its own units (about half change arms) ...
    changed = sum(a.assign(u).arm_key != a_resalted.assign(u).arm_key for u in units)
    assert 0.45 < changed / len(units) < 0.55
    # ... and the other experiment, evaluated in the same catalog, is untouched.
    catalog_before = Catalog([running("a"), running("b")])
    catalog_after = Catalog([running("a", salt="a-reshuffled"), running("b")])
    assert [catalog_before.assign(u, keys=["b"])[0] for u in units] == [
        catalog_after.assign(u, keys=["b"])[0] for u in units
    ]


def test_independent_experiments_are_uncorrelated() -> None:
    a, b = CompiledExperiment(running("a")), CompiledExperiment(running("b"))
    units = [f"user-{i}" for i in range(50_000)]
    table = np.zeros((2, 2))
    for u in units:
        table[a.assign(u).arm_key == "treatment", b.assign(u).arm_key == "treatment"] += 1
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_layers_make_experiments_mutually_exclusive() -> None:
    left = CompiledExperiment(running("left", layer=LayerSegment("ranking", 0.0, 0.5)))
    right = CompiledExperiment(running("right", layer=LayerSegment("ranking", 0.5, 1.0)))
    both = 0
    inside = 0
    for i in range(20_000):
        u = f"user-{i}"
        l_in, r_in = left.assign(u).in_experiment, right.assign(u).in_experiment
        both += l_in and r_in
        inside += l_in or r_in
    assert both == 0
    assert inside == 20_000  # the two segments tile the layer


def test_every_reason() -> None:
    targeting = parse_condition({"attr": "country", "eq": "US"})
    exp = running(
        targeting=targeting,
        overrides={"qa": "treatment"},
        holdout=Holdout("global", 0.2),
        layer=LayerSegment("l", 0.0, 0.6),
        coverage=0.7,
    )
    compiled = CompiledExperiment(exp)
    us = {"country": "US"}
    reasons = Counter(compiled.assign(f"u{i}", us).reason for i in range(5000))
    assert set(reasons) == {
        Reason.SPLIT,
        Reason.HOLDOUT,
        Reason.NOT_IN_LAYER,
        Reason.NOT_IN_COVERAGE,
    }
    # Holdout 20%, then layer 60% of the rest, then coverage 70% of that.
    assert abs(reasons[Reason.HOLDOUT] / 5000 - 0.2) < 0.03
    assert abs(reasons[Reason.SPLIT] / 5000 - 0.8 * 0.6 * 0.7) < 0.03
    miss = [compiled.assign(f"u{i}", {"country": "DE"}) for i in range(200)]
    assert Reason.TARGETING_MISS in {a.reason for a in miss}
    qa = compiled.assign("qa", {})
    assert (qa.arm_key, qa.reason, qa.in_experiment) == ("treatment", Reason.OVERRIDE, False)
    for status in (ExperimentStatus.DRAFT, ExperimentStatus.PAUSED):
        paused = assign(running(status=status), "u1")
        assert (paused.arm_key, paused.reason) == ("control", Reason.EXPERIMENT_NOT_RUNNING)
    concluded = CompiledExperiment(
        running(
            status=ExperimentStatus.CONCLUDED,
            rollout_arm="treatment",
            coverage=0.1,
            targeting=targeting,
        )
    )
    assert {concluded.assign(f"u{i}", us).arm_key for i in range(100)} == {"treatment"}
    assert concluded.assign("u1", us).reason is Reason.CONCLUDED
    assert concluded.assign("u1", {}).reason is Reason.TARGETING_MISS


def test_only_splits_produce_exposures() -> None:
    compiled = CompiledExperiment(running(coverage=0.5))
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(200):
        a = compiled.assign(f"u{i}")
        assert a.in_experiment == (a.reason is Reason.SPLIT)
        if a.in_experiment:
            e = a.exposure(f"u{i}", now, "t" * 32, "s" * 16)
            assert (e.experiment_key, e.unit_id, e.arm_key, e.model_version) == (
                "exp",
                f"u{i}",
                a.arm_key,
                a.model_version,
            )
            assert e.config_checksum == compiled.checksum == compiled.experiment.config_checksum


def test_catalog_unknown_key_is_not_found() -> None:
    catalog = Catalog([running("a")])
    with pytest.raises(NotFoundError, match="'nope'"):
        catalog.assign("u1", keys=["a", "nope"])
    assert [a.experiment_key for a in catalog.assign("u1")] == ["a"]


def test_catalog_refuses_overlapping_layer_segments() -> None:
    with pytest.raises(ValidationError, match="overlap in layer 'ranking'"):
        Catalog(
            [
                running("a", layer=LayerSegment("ranking", 0.0, 0.5)),
                running("b", layer=LayerSegment("ranking", 0.4, 0.9)),
            ]
        )
    # Different layers, or a concluded experiment, do not conflict.
    Catalog(
        [
            running("a", layer=LayerSegment("ranking", 0.0, 0.5)),
            running("b", layer=LayerSegment("search", 0.4, 0.9)),
            running(
                "c",
                layer=LayerSegment("ranking", 0.2, 0.3),
                status=ExperimentStatus.CONCLUDED,
                rollout_arm="control",
            ),
        ]
    )


def test_catalog_refuses_one_holdout_with_two_fractions() -> None:
    with pytest.raises(ValidationError, match="holdout 'global'"):
        Catalog(
            [
                running("a", holdout=Holdout("global", 0.1)),
                running("b", holdout=Holdout("global", 0.2)),
            ]
        )
