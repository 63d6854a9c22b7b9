"""The results pages and the JSON/CSV API on real stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import csv
import io
import math
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from abkit.config import Settings
from abkit.core.spec import experiment_from_dict
from abkit.ports import DecisionRecord, Store
from abkit.report import wording
from abkit.report.chart import BOTTOM, MAX_POINTS, TOP, build_chart
from abkit.runtime import Runtime
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.results import ResultsService, build_results
from abkit.store.memory import MemoryStore
from abkit.store.sql import SqlStore
from abkit.web import create_app
from tests.helpers import EXPERIMENT, T0, Clock, setup, traffic

KEY = "ranker-v2"
HOSTILE = '<script>alert("x")</script> \'q\' "dq" Ранжир 🚀 &amp;'


def client_for(store: Store, clock: Clock, **settings: Any) -> tuple[Flask, FlaskClient]:
    config = Settings(database_url="sqlite://", actor="tester", **settings)
    app = create_app(config, Runtime(config, store, clock), {"TESTING": True})
    return app, app.test_client()


def promoted(store: Store) -> Clock:
    """Two looks: "continue" on a little data, then "promote" on a lot."""
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=300, lift=0.08, seed=3)
    decisions = DecisionService(store, clock)
    assert decisions.look(KEY) is not None
    traffic(store, units=9700, lift=0.08, seed=4, start=300)
    clock.value += timedelta(minutes=1)
    outcome = decisions.look(KEY)
    assert outcome is not None and outcome.record.action == "promote"
    return clock


def test_empty_store_shows_empty_states(store: Store) -> None:
    _, client = client_for(store, Clock(T0))
    assert "No experiments yet" in client.get("/").text
    assert "No models yet" in client.get("/models").text
    assert client.get("/api/experiments").get_json() == {"experiments": []}
    assert client.get("/api/models").get_json() == {"versions": [], "changes": []}
    rows = list(csv.reader(io.StringIO(client.get("/api/experiments.csv").text)))
    assert rows == [rows[0]] and rows[0][0] == "experiment_key"


def test_pages_and_api_show_the_numbers_the_worker_decided_on(store: Store) -> None:
    clock = promoted(store)
    _, client = client_for(store, clock)
    with store.transaction() as tx:
        last = tx.decisions.last_look(KEY)
    assert last is not None
    snapshot = last.snapshot
    primary = next(c for c in snapshot["comparisons"] if c["role"] == "primary")

    listing = client.get("/")
    assert listing.status_code == 200
    assert "Promoted candidate: everyone now gets ranker-v2" in listing.text
    assert "ranker-v1" in listing.text and f"{snapshot['units']['control']:,} units" in listing.text

    page = client.get(f"/experiments/{KEY}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.text
    lift = wording.effect(primary["estimate"], "binary", False)
    assert lift in html and "pp" in lift
    assert wording.effect(primary["ci_low"], "binary", False) in html
    assert "<svg" in html and 'class="band"' in html and "promoted candidate" in html
    assert "minimum effect +1.00 pp" in html or "minimum effect +1.0 pp" in html
    assert "Traffic split (SRM)" in html and "Healthy" in html
    assert "latency_ms" in html and "within margin" in html
    assert "Decisions" in html and "beyond the minimum effect" in html

    doc = client.get(f"/api/experiments/{KEY}/results").get_json()
    assert doc["status"] == "concluded" and doc["rollout_arm"] == "candidate"
    assert doc["look"]["look"] == 2 and doc["numbers_look"] == 2
    first = doc["comparisons"][0]
    assert first["absolute"] == {
        "estimate": primary["estimate"],
        "low": primary["ci_low"],
        "high": primary["ci_high"],
        "exact": True,
    }
    assert first["p_value"] == primary["p_value"] and first["verdict"] == "better"
    assert math.isclose(
        first["relative"]["estimate"], primary["estimate"] / primary["control_mean"]
    )
    assert [e["action"] for e in doc["timeline"]] == ["create+start", "continue", "promote"]
    assert doc["verdict"]["tone"] == "good"
    assert client.get(f"/api/experiments/{KEY}").get_json() == doc

    series = client.get(f"/api/experiments/{KEY}/series").get_json()["series"]
    assert [(s["metric"], len(s["points"])) for s in series] == [
        ("conversion", 2),
        ("latency_ms", 2),
    ]
    assert series[0]["points"][-1]["estimate"] == primary["estimate"]

    history = client.get(f"/api/experiments/{KEY}/history").get_json()["decisions"]
    assert history[-1]["snapshot"]["comparisons"][0]["estimate"] == primary["estimate"]

    table = list(
        csv.DictReader(io.StringIO(client.get(f"/api/experiments/{KEY}/results.csv").text))
    )
    assert float(table[0]["estimate"]) == primary["estimate"]
    assert int(table[0]["n_treatment"]) == primary["n_treatment"]
    points = list(
        csv.DictReader(io.StringIO(client.get(f"/api/experiments/{KEY}/series.csv").text))
    )
    assert len(points) == 4 and points[0]["look"] == "1"
    audit = list(
        csv.DictReader(io.StringIO(client.get(f"/api/experiments/{KEY}/history.csv").text))
    )
    assert [r["action"] for r in audit] == ["create+start", "continue", "promote"]
    listed = list(csv.DictReader(io.StringIO(client.get("/api/experiments.csv").text)))
    assert {r["arm"]: int(r["units"]) for r in listed} == snapshot["units"]

    models = client.get("/models").text
    assert "live: <b>ranker-v2</b>" in models and "promote candidate" in models
    registry = client.get("/api/models").get_json()
    assert {v["version"]: v["status"] for v in registry["versions"]} == {
        "ranker-v1": "previous",
        "ranker-v2": "live",
    }
    assert registry["changes"][0]["version"] == "ranker-v2"
    assert "ranker-v2" in client.get("/api/models.csv").text


def test_states_before_a_decision_read_plainly(store: Store) -> None:
    clock = Clock(T0)
    service = ExperimentService(store, clock)
    service.apply(experiment_from_dict(EXPERIMENT), actor="ada")
    _, client = client_for(store, clock)
    assert "Draft: not started yet" in client.get(f"/experiments/{KEY}").text
    assert "Not started" in client.get(f"/experiments/{KEY}").text

    service.start(KEY, actor="ada")  # no policy: nothing is analysed
    traffic(store, units=10, lift=0.0)
    page = client.get(f"/experiments/{KEY}").text
    assert "Running without a decision policy" in page and "No statistics" in page
    assert client.get(f"/api/experiments/{KEY}/results").get_json()["arms"][0]["units"] == 5


def test_waiting_not_enough_data_and_paused_states(store: Store) -> None:
    clock = Clock(T0)
    setup(store, clock)
    _, client = client_for(store, clock)
    assert "Running: waiting for the first look" in client.get(f"/experiments/{KEY}").text
    assert "No data yet" in client.get(f"/experiments/{KEY}").text
    decisions = DecisionService(store, clock)
    decisions.look(KEY)  # no units at all
    page = client.get(f"/experiments/{KEY}").text
    assert "Not enough data yet" in page and "each arm needs 200" in page
    assert "not enough data" in page  # the table cell
    assert "no estimate yet" in page  # the chart's empty state
    traffic(store, units=20, lift=0.0)
    clock.value += timedelta(minutes=5)
    decisions.look(KEY)
    page = client.get(f"/experiments/{KEY}").text
    assert "Not enough data yet" in page and "too early to read" in page
    assert "<svg" in page  # one look with an estimate: drawn as an error bar
    ExperimentService(store, clock).pause(KEY, actor="ada")
    assert "Paused: everyone gets the control model" in client.get(f"/experiments/{KEY}").text


@pytest.mark.parametrize(
    "path",
    [
        "/experiments/nope",
        "/api/experiments/nope",
        "/api/experiments/nope/results",
        "/api/experiments/nope/results.csv",
        "/api/experiments/nope/series",
        "/api/experiments/nope/series.csv",
        "/api/experiments/nope/history",
        "/api/experiments/nope/history.csv",
        "/no-such-page",
    ],
)
def test_unknown_keys_are_404(store: Store, path: str) -> None:
    _, client = client_for(store, Clock(T0))
    response = client.get(path)
    assert response.status_code == 404
    if path.startswith("/api/"):
        assert response.is_json and "error" in response.get_json()
    else:
        assert "Not found" in response.text


def _assert_escaped(html: str) -> None:
    assert "<script>" not in html and "<img" not in html and "<svg onload" not in html
    assert "&lt;script&gt;" in html


def test_hostile_names_are_escaped_everywhere(store: Store) -> None:
    clock = Clock(T0 + timedelta(hours=2))
    doc = {
        **EXPERIMENT,
        "name": HOSTILE,
        "description": HOSTILE,
        "arms": [
            {**EXPERIMENT["arms"][0], "model_version": '<img src=x onerror="alert(1)">'},
            EXPERIMENT["arms"][1],
        ],
    }
    ExperimentService(store, clock).apply(experiment_from_dict(doc), actor="ada", start=True)
    hostile_metric = '<script>m("1")</script> латентность'
    comparison = {
        "metric": hostile_metric,
        "role": "primary",
        "arm": '"><svg onload=alert(1)>',
        "n_control": 10,
        "n_treatment": 12,
        "control_mean": 0.1,
        "treatment_mean": 0.2,
        "relative": False,
        "estimate": 0.1,
        "ci_low": None,
        "ci_high": 0.3,
        "p_value": 0.5,
        "status": "ok",
        "method": "msprt",
        "alpha": 0.05,
        "direction": "increase",
        "minimum_effect": 0.01,
    }
    with store.transaction() as tx:
        record = tx.experiments.get(KEY)
        tx.decisions.add(
            DecisionRecord(
                experiment_key=KEY,
                action="continue",
                reason=HOSTILE,
                actor=HOSTILE,
                config_checksum=record.experiment.config_checksum,
                decided_at=clock.now(),
                snapshot={
                    "units": {"control": 10, "candidate": 12},
                    "weights": {"control": 0.5, "candidate": 0.5},
                    "comparisons": [comparison],
                    "policy": {"primary": {"metric": hostile_metric, "kind": "binary"}},
                    "decision": {"action": "continue", "reasons": [HOSTILE]},
                },
                look=1,
            )
        )
    DecisionService(store, clock).rollback(KEY, actor=HOSTILE, reason=HOSTILE)
    _, client = client_for(store, clock, admin_token="secret")
    for path in ("/", f"/experiments/{KEY}", "/models"):
        response = client.get(path)
        assert response.status_code == 200, path
        _assert_escaped(response.text)
        assert "Ранжир 🚀" in response.text
    detail = client.get(f"/experiments/{KEY}").text
    assert "латентность" in detail and "&#34;&gt;&lt;svg onload=alert(1)&gt;" in detail
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in detail  # the model version
    missing = client.get("/experiments/%3Cscript%3Ealert(1)%3Cb%3E")
    assert missing.status_code == 404
    _assert_escaped(missing.text)
    api = client.get(f"/api/experiments/{KEY}/results")
    assert api.is_json and api.get_json()["name"] == HOSTILE
    assert api.get_json()["comparisons"][0]["absolute"]["low"] is None  # unbounded: null
    rows = list(csv.reader(io.StringIO(client.get(f"/api/experiments/{KEY}/history.csv").text)))
    manual = rows[-1]
    assert manual[5] == HOSTILE and manual[6] == HOSTILE  # quoted, not executed by a spreadsheet
    results = csv.DictReader(io.StringIO(client.get(f"/api/experiments/{KEY}/results.csv").text))
    assert [r["metric"] for r in results] == [hostile_metric]


def test_csv_cells_cannot_become_spreadsheet_formulas(store: Store) -> None:
    clock = promoted(store)
    DecisionService(store, clock).rollback(KEY, actor="=HYPERLINK(1)", reason="+cmd|' /C calc'!A0")
    _, client = client_for(store, clock)
    rows = list(csv.reader(io.StringIO(client.get(f"/api/experiments/{KEY}/history.csv").text)))
    assert rows[-1][5] == "'=HYPERLINK(1)" and rows[-1][6] == "'+cmd|' /C calc'!A0"


def test_health_and_readiness(store: Store, tmp_path: Any) -> None:
    _, client = client_for(store, Clock(T0))
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    broken = SqlStore.from_url(f"sqlite:///{tmp_path}/missing/dir/abkit.db")
    _, down = client_for(broken, Clock(T0))
    assert down.get("/healthz").status_code == 200
    ready = down.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["status"] == "unavailable"
    page = down.get("/")
    assert page.status_code == 503 and "Store unavailable" in page.text
    assert down.get("/api/experiments").status_code == 503
    broken.close()


def test_pages_send_security_headers(store: Store) -> None:
    _, client = client_for(store, Clock(T0))
    response = client.get("/")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    with client.get("/static/abkit.css") as css:  # a file response: close it
        assert css.status_code == 200 and css.mimetype == "text/css"


def test_results_are_cached_per_look(store: Store) -> None:
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=400, lift=0.02, seed=5)
    decisions = DecisionService(store, clock)
    decisions.look(KEY)
    service = ResultsService(store, clock)
    first = service.results(KEY)
    assert service.results(KEY) is first  # no new look: the cached object, nothing rebuilt
    traffic(store, units=400, lift=0.02, seed=6, start=400)
    assert service.results(KEY) is first  # new data but no new look: the worker's numbers
    clock.value += timedelta(minutes=1)
    decisions.look(KEY)
    second = service.results(KEY)
    assert second is not first and second.look is not None and second.look.look == 2
    ExperimentService(store, clock).pause(KEY, actor="ada")
    paused = service.results(KEY)
    assert paused is not second and paused.status == "paused"


def _look(look: int, estimate: float | None, low: float | None, high: float | None) -> Any:
    return {
        "metric": "conversion",
        "role": "primary",
        "arm": "candidate",
        "n_control": 100 * look,
        "n_treatment": 100 * look,
        "control_mean": 0.1,
        "treatment_mean": 0.1 + (estimate or 0.0),
        "relative": False,
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "p_value": 0.5,
        "status": "ok" if estimate is not None else "not_enough_data",
        "method": "msprt",
        "alpha": 0.05,
        "direction": "increase",
        "minimum_effect": 0.01,
    }


def _results_with(looks: list[Any], final: str = "continue") -> Any:
    store = MemoryStore()
    setup(store, Clock(T0))
    with store.transaction() as tx:
        record = tx.experiments.get(KEY)
    decisions = [
        DecisionRecord(
            experiment_key=KEY,
            action=final if i == len(looks) else "continue",
            arm_key="candidate" if final == "promote" and i == len(looks) else None,
            reason="r",
            actor="worker",
            config_checksum="c" * 16,
            decided_at=T0 + timedelta(minutes=5 * i),
            snapshot={"comparisons": [doc], "units": {"control": 1, "candidate": 1}},
            look=i,
        )
        for i, doc in enumerate(looks, start=1)
    ]
    return build_results(record, decisions, {})


def test_chart_with_one_look_and_unbounded_interval() -> None:
    results = _results_with([_look(1, 0.02, None, None)])
    chart = build_chart(results.series[0], results.timeline)
    assert chart is not None and chart.band == "" and len(chart.dots) == 1
    dot = chart.dots[0]
    assert (dot.low, dot.high) == (BOTTOM, TOP) and chart.clipped and chart.whiskers
    assert [r.kind for r in chart.rules] == ["effect", "zero"]  # sorted top to bottom
    assert chart.x_ticks and chart.y_ticks and "−∞" in dot.title and "+∞" in dot.title


def test_chart_without_any_estimate_is_an_empty_state() -> None:
    results = _results_with([_look(1, None, None, None), _look(2, None, None, None)])
    assert build_chart(results.series[0], results.timeline) is None


def test_chart_of_many_looks_is_thinned_and_marks_the_decision() -> None:
    looks = [_look(i, 0.03, 0.03 - 1 / i, 0.03 + 1 / i) for i in range(1, 1201)]
    results = _results_with(looks, final="promote")
    chart = build_chart(results.series[0], results.timeline)
    assert chart is not None and MAX_POINTS <= len(chart.dots) <= MAX_POINTS + 2
    assert chart.dots[-1].decided and not chart.whiskers
    assert [m.label for m in chart.markers] == ["promoted candidate"]
    assert chart.markers[0].x1 == chart.dots[-1].x
    assert chart.clipped  # the first looks' very wide sequences are cut at the edge


def test_detail_page_renders_unbounded_and_single_look_charts(store: Store) -> None:
    clock = Clock(T0 + timedelta(hours=1))
    setup(store, clock)
    with store.transaction() as tx:
        record = tx.experiments.get(KEY)
        tx.decisions.add(
            DecisionRecord(
                experiment_key=KEY,
                action="continue",
                reason="waiting",
                actor="worker",
                config_checksum=record.experiment.config_checksum,
                decided_at=clock.now(),
                snapshot={
                    "comparisons": [_look(1, 0.02, None, 0.5)],
                    "units": {"control": 100, "candidate": 100},
                    "weights": {"control": 0.5, "candidate": 0.5},
                    "policy": {"primary": {"metric": "conversion", "kind": "binary"}},
                },
                look=1,
            )
        )
    _, client = client_for(store, clock)
    page = client.get(f"/experiments/{KEY}").text
    assert "band cut at the edge" in page and "−∞" in page
    doc = client.get(f"/api/experiments/{KEY}/series").get_json()
    assert doc["series"][0]["points"][0]["low"] is None
