"""The look snapshot is a declared contract: it round-trips, it is versioned, old rows read."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from abkit.core.analysis import analyze, failed
from abkit.core.decision import Action
from abkit.core.model import Arm, Experiment, ExperimentStatus
from abkit.core.policy_document import policy_from_dict
from abkit.core.rules import decide
from abkit.core.snapshot import (
    SCHEMA_VERSION,
    LookSnapshot,
    ManualAction,
    MonitorStates,
    Role,
    StatusChange,
    read_entry,
    read_look,
)
from abkit.core.stats import ArmSummary, Method, TestStatus

T0 = datetime(2026, 5, 1, tzinfo=UTC)
FIXTURE = Path(__file__).parents[1] / "fixtures" / "snapshots" / "store.json"
EXPERIMENT = Experiment(
    "ranker",
    (Arm("control", "v1", 0.5, control=True), Arm("candidate", "v2", 0.5)),
    status=ExperimentStatus.RUNNING,
)
POLICY = policy_from_dict(
    {
        "primary": {"metric": "conversion", "kind": "binary", "minimum_effect": 0.01},
        "guardrails": [
            {"metric": "latency_ms", "kind": "continuous", "direction": "decrease",
             "margin": 0.05, "relative": True},
        ],
        "min_units_per_arm": 100,
    }
)  # fmt: skip


def _look(n: int, previous: MonitorStates | None = None) -> LookSnapshot:
    summaries = {
        "conversion": {"control": ArmSummary(n, n // 10, n // 10), "candidate": ArmSummary(
            n, n // 7, n // 7)},
        "latency_ms": {
            "control": ArmSummary.from_moments(n, 100.0, 400.0 if n > 1 else 0.0),
            "candidate": ArmSummary.from_moments(n, 99.0, 400.0 if n > 1 else 0.0),
        },
    }  # fmt: skip
    now = T0 + timedelta(days=2)
    analysis = analyze(EXPERIMENT, POLICY, summaries, previous, look=1, at=now, started_at=T0)
    return LookSnapshot(analysis, POLICY, decide(analysis, POLICY, now))


def _stored(doc: dict[str, Any]) -> dict[str, Any]:
    """What a JSON column gives back: NaN and infinities are not JSON."""
    text = json.dumps(doc, allow_nan=False)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def test_a_look_snapshot_round_trips_through_its_stored_document() -> None:
    snapshot = _look(5000)
    doc = _stored(snapshot.to_dict())
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    assert doc["experiment_key"] == "ranker" and doc["decision"]["action"] == "promote"
    back = read_look(doc, experiment_key="ranker", look=1, at=T0)
    assert back == snapshot  # every field, typed: enums, policy, monitor state
    assert back.analysis.primary()[0].role is Role.PRIMARY
    assert back.analysis.primary()[0].method is Method.MSPRT


def test_unbounded_and_unknown_numbers_are_null_in_the_document_and_read_back() -> None:
    snapshot = _look(1)  # one unit per arm: no estimate, unbounded intervals
    doc = _stored(snapshot.to_dict())
    primary = doc["comparisons"][0]
    assert primary["ci_low"] is None and primary["ci_high"] is None
    back = read_look(doc, experiment_key="ranker", look=1, at=T0)
    assert back is not None
    comparison = back.analysis.primary()[0]
    assert comparison.ci_low == -math.inf and comparison.ci_high == math.inf
    assert comparison.status is TestStatus.NOT_ENOUGH_DATA


def test_the_monitor_state_the_next_look_continues_from_survives_storage() -> None:
    first = _look(2000)
    stored = read_look(_stored(first.to_dict()), experiment_key="ranker", look=1, at=T0)
    assert stored is not None
    second = _look(4000, stored.analysis.state)
    direct = _look(4000, first.analysis.state)
    assert second.analysis == direct.analysis


def test_a_failed_look_keeps_the_previous_state() -> None:
    state = _look(2000).analysis.state
    analysis = failed(EXPERIMENT, look=2, at=T0, error="store down", previous=state)
    assert analysis.state == state and analysis.error == "store down"


def test_manual_actions_and_status_changes_are_typed_too() -> None:
    manual = ManualAction(Action.ROLLBACK)
    assert read_entry(_stored(manual.to_dict()), experiment_key="k", look=None, at=T0) == manual
    change = StatusChange(3, ExperimentStatus.PAUSED)
    assert read_entry(_stored(change.to_dict()), experiment_key="k", look=None, at=T0) == change
    assert read_entry({"n": [1, 2]}, experiment_key="k", look=None, at=T0) is None


def test_every_entry_of_a_schema_1_audit_trail_reads() -> None:
    """The committed fixture was written before snapshots had a version (schema 1)."""
    doc = json.loads(FIXTURE.read_text())
    kinds = []
    for e in doc["experiments"]:
        for d in e["decisions"]:
            at = datetime.fromisoformat(d["decided_at"])
            entry = read_entry(d["snapshot"], experiment_key="x", look=d["look"], at=at)
            assert entry is not None, d
            kinds.append(type(entry).__name__)
            if isinstance(entry, LookSnapshot):
                assert entry.schema_version == 1 and entry.policy is not None
                assert entry.decision is not None and entry.decision.action.value == d["action"]
                again = read_look(
                    _stored(entry.to_dict()), experiment_key="x", look=d["look"], at=at
                )
                assert again is not None and again.analysis == entry.analysis
    assert {"LookSnapshot", "ManualAction", "StatusChange"} == set(kinds)


def test_damaged_documents_read_as_unknown_never_as_an_error() -> None:
    doc = {
        "comparisons": [{"metric": 7, "role": "sideways", "status": "odd", "estimate": "x"}],
        "units": {"control": "many"},
        "state": {"monitors": {"m/a": {"looks": "two"}}},
        "policy": {"primary": "not a mapping"},
        "decision": {"action": "explode"},
    }
    snapshot = read_look(doc, experiment_key="k", look=4, at=T0)
    assert snapshot is not None and snapshot.policy is None and snapshot.decision is None
    comparison = snapshot.analysis.comparisons[0]
    assert comparison.metric == "?" and comparison.role is Role.PRIMARY
    assert comparison.status is None and math.isnan(comparison.estimate)
    assert snapshot.analysis.units == {"control": 0} and snapshot.analysis.at == T0
    assert snapshot.analysis.state.sequential["m/a"].looks == 0
