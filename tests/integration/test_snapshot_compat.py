"""Snapshots stored by an older abkit still render, identically, on every backend.

``tests/fixtures/snapshots/store.json`` is an audit trail written by the code of the commit that
added it (schema 1: untyped snapshots without a ``schema_version``); ``rendered/`` holds what
``abkit results`` and the results pages showed for it then (see the README there). The current
code must read the same rows and print the same text, JSON, CSV and HTML.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from abkit.config import Settings
from abkit.core.model import ExperimentStatus, ModelStatus
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.ports import DecisionRecord, ExperimentRecord, ModelVersion, Store
from abkit.report import document, tables, text
from abkit.runtime import Runtime
from abkit.web import create_app
from tests.helpers import Clock

FIXTURE = Path(__file__).parents[1] / "fixtures" / "snapshots"
CSRF = re.compile(r'(name="csrf_token" value=")[^"]*(")')


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def load_fixture(store: Store) -> Clock:
    """Write the fixture's experiments, audit trails and registry into ``store`` as rows."""
    doc: dict[str, Any] = json.loads((FIXTURE / "store.json").read_text())
    with store.transaction() as tx:
        for e in doc["experiments"]:
            experiment = experiment_from_dict(
                e["experiment"],
                status=ExperimentStatus(e["status"]),
                rollout_arm=e["rollout_arm"],
            )
            record = ExperimentRecord(
                experiment,
                revision=0,
                created_at=_time(e["created_at"]),  # type: ignore[arg-type]
                updated_at=_time(e["updated_at"]),  # type: ignore[arg-type]
                started_at=_time(e["started_at"]),
                concluded_at=_time(e["concluded_at"]),
                policy=policy_from_dict(e["policy"]),
            )
            tx.experiments.save(record, expected_revision=None)
            for d in e["decisions"]:
                tx.decisions.add(
                    DecisionRecord(
                        experiment_key=experiment.key,
                        action=d["action"],
                        reason=d["reason"],
                        actor=d["actor"],
                        config_checksum=d["config_checksum"],
                        decided_at=_time(d["decided_at"]),  # type: ignore[arg-type]
                        arm_key=d["arm_key"],
                        snapshot=d["snapshot"],
                        look=d["look"],
                    )
                )
        for m in doc["models"]:
            version = ModelVersion(
                m["model"],
                m["version"],
                ModelStatus(m["status"]),
                _time(m["created_at"]),  # type: ignore[arg-type]
                _time(m["updated_at"]),  # type: ignore[arg-type]
                m["experiment_key"],
            )
            tx.models.register(
                version.model,
                version.version,
                now=version.created_at,
                experiment_key=version.experiment_key,
            )
            tx.models.set_status(
                version.model, version.version, version.status, now=version.updated_at
            )
    return Clock(datetime.fromisoformat(doc["now"]))


def rendered(name: str) -> str:
    return (FIXTURE / "rendered" / name).read_bytes().decode()


KEYS = ("ranker-v2", "ranker-gs", "ranker-3arm")


@pytest.mark.parametrize("key", KEYS)
def test_abkit_results_renders_an_old_snapshot_as_it_did(store: Store, key: str) -> None:
    clock = load_fixture(store)
    results = Runtime(Settings(database_url="sqlite://"), store, clock).results.results(key)
    now = clock.now()
    assert text.results_text(results, now) + "\n" == rendered(f"{key}.txt")
    assert json.dumps(document.results_doc(results, now), indent=2, ensure_ascii=False) == rendered(
        f"{key}.json"
    )
    assert tables.csv_text(tables.RESULTS_COLUMNS, tables.results_rows(results)) == rendered(
        f"{key}.csv"
    )


def test_the_pages_and_api_render_old_snapshots_as_they_did(store: Store) -> None:
    clock = load_fixture(store)
    settings = Settings(database_url="sqlite://", actor="tester")
    app = create_app(settings, Runtime(settings, store, clock), {"TESTING": True})
    client = app.test_client()
    paths = {
        "/": "experiments.html",
        "/models": "models.html",
        "/api/experiments": "experiments.json",
        "/api/experiments.csv": "experiments.csv",
        "/api/models": "models.json",
    }
    for key in KEYS:
        paths[f"/experiments/{key}"] = f"{key}.html"
        paths[f"/api/experiments/{key}/series"] = f"{key}-series.json"
        paths[f"/api/experiments/{key}/series.csv"] = f"{key}-series.csv"
        paths[f"/api/experiments/{key}/history.csv"] = f"{key}-history.csv"
    for path, name in paths.items():
        response = client.get(path)
        assert response.status_code == 200, path
        text = CSRF.sub(r"\1CSRF\2", response.text)
        assert text == rendered(name), path
