"""The alias moves that follow a decision, planned without a registry (abkit/core/aliases.py)."""

from __future__ import annotations

import pytest

from abkit.config import Settings
from abkit.core.aliases import (
    AliasChange,
    AliasMove,
    AliasNames,
    ModelUri,
    Operation,
    OperationKind,
    alias_change,
    parse_model_uri,
    plan,
)
from abkit.core.spec import experiment_from_dict
from abkit.errors import ValidationError

NAMES = AliasNames()
SET, DELETE, TAG = OperationKind.SET_ALIAS, OperationKind.DELETE_ALIAS, OperationKind.SET_TAG

EXPERIMENT = experiment_from_dict(
    {
        "key": "ranker-v2",
        "model": "ranker",
        "arms": [
            {"key": "control", "model_version": "models:/ranker/1", "weight": 0.5, "control": True},
            {"key": "candidate", "model_version": "models:/ranker/2", "weight": 0.5},
        ],
    }
)


def change(champion: str | None = None, undo: tuple[int, ...] = ()) -> AliasChange:
    return AliasChange("ranker-v2", 7, "promote" if champion else "rollback", "ranker", NAMES,
                       champion=champion, undo=undo)  # fmt: skip


def aliases(operations: tuple[Operation, ...]) -> list[tuple[str, str, str | None]]:
    return [(o.kind.value, o.name, o.version) for o in operations if o.kind is not TAG]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ranker-v2", None),
        ("models:/ranker/2", ModelUri("ranker", "2")),
        ("models:/team.schema.ranker/12", ModelUri("team.schema.ranker", "12")),
    ],
)
def test_model_uris(value: str, expected: ModelUri | None) -> None:
    assert parse_model_uri(value) == expected
    if expected is not None:
        assert str(expected) == value


@pytest.mark.parametrize(
    "value",
    ["models:/ranker@champion", "models:/ranker/Production", "models:/ranker/0", "models:/"],
)
def test_a_moving_or_malformed_uri_is_refused_by_name(value: str) -> None:
    with pytest.raises(
        ValidationError, match=r"arms\[1\]\.model_version: .*models:/<name>/<version>"
    ):
        parse_model_uri(value, "arms[1].model_version")


def test_a_promotion_keeps_the_replaced_champion_reachable() -> None:
    result = plan(change("2"), {"champion": "1", "previous-champion": None}, [])
    # previous first: the old champion never loses its last alias
    assert aliases(result.operations) == [
        ("set_alias", "previous-champion", "1"),
        ("set_alias", "champion", "2"),
    ]
    assert result.after == {"champion": "2", "previous-champion": "1"}


def test_a_promotion_without_a_champion_leaves_previous_alone() -> None:
    result = plan(change("2"), {"champion": None, "previous-champion": "5"}, [])
    assert aliases(result.operations) == [("set_alias", "champion", "2")]
    assert result.after == {"champion": "2", "previous-champion": "5"}


def test_a_promotion_of_the_champion_moves_nothing() -> None:
    result = plan(change("2"), {"champion": "2", "previous-champion": "1"}, [])
    assert result.operations == () and result.notes == ("champion was already on version 2",)


def move(
    before: dict[str, str | None], after: dict[str, str | None], decision: int = 3
) -> AliasMove:
    return AliasMove(decision, "promote", "ranker", before, after)


def test_a_rollback_restores_what_the_promotion_replaced() -> None:
    promoted = move({"champion": "1", "previous-champion": None},
                    {"champion": "2", "previous-champion": "1"})  # fmt: skip
    result = plan(change(undo=(3,)), promoted.after, [promoted])
    assert aliases(result.operations) == [
        ("set_alias", "champion", "1"),
        ("delete_alias", "previous-champion", None),
    ]
    assert result.after == promoted.before


def test_a_rollback_leaves_an_alias_someone_moved_since() -> None:
    promoted = move({"champion": "1", "previous-champion": None},
                    {"champion": "2", "previous-champion": "1"})  # fmt: skip
    # Another experiment promoted version 3 since: champion 3, previous 2.
    result = plan(change(undo=(3,)), {"champion": "3", "previous-champion": "2"}, [promoted])
    assert result.operations == ()
    assert len(result.notes) == 2 and "champion points to 3 now, not to 2" in result.notes[0]


def test_a_rollback_undoes_every_promotion_since_the_last_one() -> None:
    first = move({"champion": "1", "previous-champion": None},
                 {"champion": "2", "previous-champion": "1"}, decision=3)  # fmt: skip
    second = move({"champion": "2", "previous-champion": "1"},
                  {"champion": "3", "previous-champion": "2"}, decision=5)  # fmt: skip
    result = plan(change(undo=(5, 3)), second.after, [second, first])
    assert result.after == first.before


def test_a_rollback_of_a_promotion_that_moved_nothing_moves_nothing() -> None:
    result = plan(change(undo=(9,)), {"champion": "1", "previous-champion": None}, [])
    assert result.operations == ()
    assert result.notes == ("the promotion (entry 9) moved no MLflow alias",)


def test_a_decision_tags_every_version_with_the_experiment_decision_and_look() -> None:
    built = alias_change(EXPERIMENT, decision_id=7, action="promote", rollout_arm="candidate",
                         look=12, names=NAMES)  # fmt: skip
    assert built is not None
    assert (built.model, built.champion, built.undo) == ("ranker", "2", ())
    tags = {t.version: dict(t.tags) for t in built.tags}
    assert tags["2"] == {"abkit.experiment": "ranker-v2", "abkit.arm": "candidate",
                         "abkit.decision": "promote", "abkit.look": "12",
                         "abkit.rolled_out": "true"}  # fmt: skip
    assert tags["1"]["abkit.rolled_out"] == "false"
    result = plan(built, {"champion": "1", "previous-champion": None}, [])
    assert sum(o.kind is TAG for o in result.operations) == 10
    rollback = alias_change(EXPERIMENT, decision_id=8, action="rollback", rollout_arm="control",
                            look=None, names=NAMES, undo=(7,))  # fmt: skip
    assert rollback is not None and rollback.champion is None and rollback.undo == (7,)
    assert dict(rollback.tags[-1].tags)["abkit.look"] == "manual"


def test_an_experiment_without_mlflow_versions_changes_nothing() -> None:
    arms = [
        {"key": "a", "model_version": "v1", "weight": 0.5, "control": True},
        {"key": "b", "model_version": "models:/ranker@champion", "weight": 0.5},  # not a version
    ]
    plain = experiment_from_dict({"key": "k", "arms": arms})
    built = alias_change(plain, decision_id=1, action="promote", rollout_arm="b", look=1,
                         names=NAMES)  # fmt: skip
    assert built is None


def test_the_documents_round_trip_and_a_bad_intent_is_an_error() -> None:
    built = alias_change(EXPERIMENT, decision_id=7, action="rollback", rollout_arm="control",
                         look=3, names=AliasNames("prod", "prod-before"), undo=(4, 2))  # fmt: skip
    assert built is not None
    assert AliasChange.from_dict(built.to_dict()) == built
    before, after = {"prod": "1", "prod-before": None}, {"prod": "2", "prod-before": "1"}
    done = AliasMove(7, "promote", "ranker", before, after, ("models:/ranker/2",), ("a note",), 3)
    assert AliasMove.from_dict(done.to_dict()) == done
    assert AliasMove.from_dict({"status": "running"}) is None
    with pytest.raises(ValidationError, match="cannot be read"):
        AliasChange.from_dict({"model": "ranker"})
    assert done.reasons() == (
        "MLflow prod → models:/ranker/2 (was models:/ranker/1)",
        "MLflow prod-before → models:/ranker/1 (was unset)",
        "a note",
        "tagged models:/ranker/2 abkit.decision=promote",
        "done at attempt 3",
    )
    assert Operation(SET, "ranker", "prod", "2").describe() == "prod → models:/ranker/2"
    assert Operation(DELETE, "ranker", "prod").describe() == "prod removed from ranker"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ABKIT_MLFLOW_CHAMPION_ALIAS": "latest"}, "cannot be an MLflow alias"),
        ({"ABKIT_MLFLOW_PREVIOUS_ALIAS": "v3"}, "cannot be an MLflow alias"),
        ({"ABKIT_MLFLOW_PREVIOUS_ALIAS": "has space"}, "cannot be an MLflow alias"),
        ({"ABKIT_MLFLOW_PREVIOUS_ALIAS": "champion"}, "must differ"),
        ({"ABKIT_MLFLOW_RETRY_MAX_SECONDS": "0"}, "positive"),
    ],
)
def test_alias_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.from_env(env)


def test_alias_settings_are_read() -> None:
    settings = Settings.from_env(
        {"ABKIT_MLFLOW_TRACKING_URI": "http://mlflow:5000", "ABKIT_MLFLOW_CHAMPION_ALIAS": "prod"}
    )
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert (settings.mlflow_champion_alias, settings.mlflow_previous_alias) == (
        "prod",
        "previous-champion",
    )
