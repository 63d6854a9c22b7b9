"""Experiment validation: every mistake names its field and says what to do."""

from __future__ import annotations

import pytest

from abkit.core.model import Arm, Experiment, ExperimentStatus, LayerSegment
from abkit.core.spec import experiment_from_dict, experiment_to_dict
from abkit.errors import ValidationError

ARMS = [
    {"key": "control", "model_version": "v1", "weight": 0.5, "control": True},
    {"key": "treatment", "model_version": "v2", "weight": 0.5},
]


def doc(**changes: object) -> dict[str, object]:
    d: dict[str, object] = {"key": "exp", "arms": [dict(a) for a in ARMS]}
    d.update(changes)
    return d


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        (doc(arms=[ARMS[0]]), "arms", "at least 2 arms"),
        (doc(arms=[ARMS[0], {**ARMS[1], "weight": 0.6}]), "arms", "weights must sum to 1"),
        (
            doc(arms=[{**ARMS[0], "control": False}, ARMS[1]]),
            "arms",
            "exactly one arm must be the control",
        ),
        (
            doc(arms=[ARMS[0], {**ARMS[1], "control": True}]),
            "arms",
            "exactly one arm must be the control",
        ),
        (doc(arms=[ARMS[0], {**ARMS[1], "key": "control"}]), "arms[1].key", "duplicate arm key"),
        (doc(arms=[ARMS[0], {**ARMS[1], "weight": 0}]), "arms[1].weight", "0 < x <= 1"),
        (doc(arms=[ARMS[0], {**ARMS[1], "weight": "half"}]), "arms[1].weight", "number"),
        (doc(arms=[ARMS[0], {**ARMS[1], "weight": float("nan")}]), "arms[1].weight", "0 < x <= 1"),
        (
            doc(arms=[ARMS[0], {**ARMS[1], "model_version": ""}]),
            "arms[1].model_version",
            "non-empty",
        ),
        (
            doc(arms=[ARMS[0], {**ARMS[1], "weigth": 0.5}]),
            "arms[1].weigth",
            "did you mean 'weight'",
        ),
        (doc(arms=[ARMS[0], {"key": "t", "weight": 0.5}]), "arms[1].model_version", "is required"),
        (doc(key="Bad Key"), "key", "not a valid key"),
        (doc(coverage=1.5), "coverage", "0 <= x <= 1"),
        (doc(coverge=0.5), "coverge", "did you mean 'coverage'"),
        (doc(layer={"key": "l", "start": 0.5, "end": 0.5}), "layer.end", "greater than start"),
        (doc(layer={"key": "l", "start": 0.1}), "layer.end", "is required"),
        (doc(overrides={"qa": "nope"}), "overrides['qa']", "not one of"),
        (doc(hash_version=2), "hash_version", "only hash version 1"),
        (doc(targeting={"attr": "x", "gt": "a"}), "targeting.gt", "compares numbers"),
        ({"arms": ARMS}, "key", "is required"),
    ],
)
def test_invalid_documents(document: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        experiment_from_dict(document)
    assert info.value.field == field
    assert words in info.value.message


def test_defaults_and_round_trip() -> None:
    exp = experiment_from_dict(
        doc(
            layer={"key": "ranking", "start": 0, "end": 0.5},
            holdout={"key": "global", "fraction": 0.05},
            targeting={"all": [{"attr": "country", "in": ["US"]}]},
            overrides={"qa": "treatment"},
            coverage=0.25,
        )
    )
    assert exp.salt == "exp" and exp.model == "exp" and exp.status is ExperimentStatus.DRAFT
    assert experiment_from_dict(experiment_to_dict(exp)) == exp


def test_checksum_tracks_assignment_config_only() -> None:
    base = experiment_from_dict(doc())
    assert (
        base.config_checksum == experiment_from_dict(doc(description="new words")).config_checksum
    )
    assert (
        base.config_checksum
        == experiment_from_dict(doc(overrides={"qa": "control"})).config_checksum
    )
    assert base.config_checksum != experiment_from_dict(doc(coverage=0.5)).config_checksum
    assert base.config_checksum != experiment_from_dict(doc(salt="other")).config_checksum
    assert len(base.config_checksum) == 16


def test_rollout_arm_only_when_concluded() -> None:
    arms = (Arm("c", "v1", 0.5, True), Arm("t", "v2", 0.5))
    with pytest.raises(ValidationError, match="concluded"):
        Experiment("e", arms, status=ExperimentStatus.RUNNING, rollout_arm="t")
    with pytest.raises(ValidationError, match="concluded"):
        Experiment("e", arms, status=ExperimentStatus.CONCLUDED)
    with pytest.raises(ValidationError, match="not one of the arms"):
        Experiment("e", arms, status=ExperimentStatus.CONCLUDED, rollout_arm="x")


def test_layer_overlap_helper() -> None:
    assert LayerSegment("l", 0, 0.5).overlaps(LayerSegment("l", 0.49, 1))
    assert not LayerSegment("l", 0, 0.5).overlaps(LayerSegment("l", 0.5, 1))
    assert not LayerSegment("l", 0, 0.5).overlaps(LayerSegment("m", 0, 0.5))
