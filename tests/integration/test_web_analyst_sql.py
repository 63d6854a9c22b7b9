"""An analyst with plain SQL gets the results page's numbers (SQLite and PostgreSQL).

The queries are the ones published in analysis/README.md (each ```sql block starting with
``-- name: ...``), run as they are, so the README cannot drift from what the page shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from abkit.config import Settings
from abkit.core.metrics import Metric, MetricKind
from abkit.core.model import Event
from abkit.core.stats import ArmSummary, SequentialMonitor
from abkit.runtime import Runtime
from abkit.services.decisions import DecisionService
from abkit.store.schema import UTCDateTime
from abkit.store.sql import SqlStore
from abkit.web import create_app
from tests.helpers import T0, Clock, setup, traffic

README = Path(__file__).parents[2] / "analysis" / "README.md"
QUERY = re.compile(r"```sql\n-- name: (\w+)\n(.*?)```", re.DOTALL)
KEY = "ranker-v2"


def readme_queries() -> dict[str, str]:
    return {name: sql for name, sql in QUERY.findall(README.read_text())}


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    assert a is not None and b is not None
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


@pytest.fixture
def looked(sql_url: str) -> Iterator[tuple[SqlStore, dict[str, Any], Any]]:
    """An experiment with traffic (and revenue/session events), one look; the page's JSON."""
    store = SqlStore.from_url(sql_url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=1200, lift=0.04, seed=11)
    extra = []
    for i in range(0, 1200, 3):
        at = T0 + timedelta(seconds=i % 600 + 30)
        extra.append(Event(f"s{i}", f"user-{i}", "session", 1.0, at))
        extra.append(Event(f"s{i}b", f"user-{i}", "session", 1.0, at))
        extra.append(Event(f"r{i}", f"user-{i}", "revenue", 2.5 + i % 7, at))
    with store.transaction() as tx:
        tx.events.add(extra)
    outcome = DecisionService(store, clock).look(KEY)
    assert outcome is not None and outcome.record.look == 1
    settings = Settings(database_url=sql_url, actor="tester")
    app = create_app(settings, Runtime(settings, store, clock), {"TESTING": True})
    page = app.test_client().get(f"/api/experiments/{KEY}/results").get_json()
    yield store, page, outcome.record.decided_at
    store.close()


def run(store: SqlStore, name: str, **params: Any) -> list[dict[str, Any]]:
    sql = readme_queries()[name]
    query = sa.text(sql)
    if ":as_of" in sql:
        query = query.bindparams(sa.bindparam("as_of", type_=UTCDateTime()))
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query, params).mappings()]


def test_every_named_readme_query_runs() -> None:
    assert set(readme_queries()) >= {
        "page_numbers",
        "as_of_look",
        "current_lift",
        "daily",
        "exposures_daily",
        "ratio",
    }


def test_the_worker_s_numbers_read_back_from_the_snapshot_view(looked: Any) -> None:
    store, page, _ = looked
    rows = run(store, "page_numbers", experiment_key=KEY)
    assert [(r["role"], r["metric"], r["arm"]) for r in rows] == [
        (c["role"], c["metric"], c["arm"]) for c in page["comparisons"]
    ]
    for row, c in zip(rows, page["comparisons"], strict=True):
        assert row["look"] == page["numbers_look"] == 1
        assert (row["n_control"], row["n_treatment"]) == (c["n_control"], c["n_treatment"])
        tested = c["relative"] if c["tested_scale"] == "relative" else c["absolute"]
        assert row["relative"] == (c["tested_scale"] == "relative")
        for column, value in (
            ("control_mean", c["control_mean"]),
            ("treatment_mean", c["treatment_mean"]),
            ("estimate", tested["estimate"]),
            ("ci_low", tested["low"]),
            ("ci_high", tested["high"]),
            ("p_value", c["p_value"]),
        ):
            assert close(row[column], value, rel=1e-12), column


def test_units_means_and_lifts_recomputed_from_raw_rows_as_of_the_look(looked: Any) -> None:
    store, page, at = looked
    primary = next(c for c in page["comparisons"] if c["role"] == "primary")
    for name, params in (
        ("as_of_look", {"experiment_key": KEY, "metric": "conversion", "as_of": at}),
        ("current_lift", {"experiment_key": KEY, "metric": "conversion"}),
    ):
        control, candidate = run(store, name, **params)
        assert (control["arm_key"], candidate["arm_key"]) == ("control", "candidate"), name
        assert (control["n"], candidate["n"]) == (primary["n_control"], primary["n_treatment"])
        assert close(control["mean"], primary["control_mean"], rel=1e-12)
        assert close(candidate["mean"], primary["treatment_mean"], rel=1e-12)
        assert close(candidate["absolute_lift"], primary["absolute"]["estimate"])
        assert close(candidate["relative_lift"], primary["relative"]["estimate"])
        units = {a["key"]: a["units"] for a in page["arms"]}
        assert units == {"control": control["n"], "candidate": candidate["n"]}


def test_the_interval_from_the_sql_sums_is_the_page_s_interval(looked: Any) -> None:
    store, page, at = looked
    params = {"experiment_key": KEY, "metric": "conversion", "as_of": at}
    control, candidate = run(store, "as_of_look", **params)
    monitor = SequentialMonitor(alpha=0.05, n_star=5000)
    result = monitor.update(
        ArmSummary(int(control["n"]), float(control["s"]), float(control["ss"])),
        ArmSummary(int(candidate["n"]), float(candidate["s"]), float(candidate["ss"])),
    )
    primary = next(c for c in page["comparisons"] if c["role"] == "primary")
    assert close(result.ci_low, primary["absolute"]["low"])
    assert close(result.ci_high, primary["absolute"]["high"])
    assert close(result.p_value, primary["p_value"])


def test_views_agree_with_the_store_s_own_sufficient_statistics(looked: Any) -> None:
    store, page, _ = looked
    metrics = [
        Metric("conversion", MetricKind.BINARY),
        Metric("latency_ms", MetricKind.CONTINUOUS),
        Metric("rps", MetricKind.RATIO, event="revenue", denominator="session"),
    ]
    with store.transaction() as tx:
        summaries = tx.analysis.summaries(KEY, metrics)
    with store.engine.connect() as conn:
        totals = {
            (r["arm_key"], r["metric"]): r
            for r in conn.execute(
                sa.text("SELECT * FROM v_arm_metric_totals WHERE experiment_key = :k"), {"k": KEY}
            ).mappings()
        }
    for arm in ("control", "candidate"):
        conversion = summaries["conversion"][arm]
        row = totals[(arm, "conversion")]
        assert (row["units"], row["units_with_events"]) == (conversion.n, conversion.sum)
        latency = summaries["latency_ms"][arm]
        row = totals[(arm, "latency_ms")]
        assert close(row["value_sum"], latency.sum) and close(row["value_sum_sq"], latency.sum_sq)
        daily = [r for r in run(store, "daily", experiment_key=KEY, metric="conversion")]
        last = [r for r in daily if r["arm_key"] == arm][-1]
        assert (last["units"], last["units_with_events"]) == (conversion.n, conversion.sum)
        exposed = [r for r in run(store, "exposures_daily", experiment_key=KEY)]
        assert [r for r in exposed if r["arm_key"] == arm][-1]["units_cumulative"] == conversion.n
    ratio = {r["arm_key"]: r for r in run(store, "ratio", experiment_key=KEY)}
    for arm, summary in summaries["rps"].items():
        row = ratio[arm]
        assert row["n"] == summary.n
        for column, value in (
            ("num_sum", summary.num_sum),
            ("den_sum", summary.den_sum),
            ("num_sum_sq", summary.num_sum_sq),
            ("den_sum_sq", summary.den_sum_sq),
            ("cross_sum", summary.cross_sum),
        ):
            assert close(row[column], value), column
    guardrail = next(c for c in page["comparisons"] if c["role"] == "guardrail")
    control = totals[("control", "latency_ms")]
    candidate = totals[("candidate", "latency_ms")]
    assert close(control["value_sum"] / control["units"], guardrail["control_mean"])
    assert close(candidate["value_sum"] / candidate["units"], guardrail["treatment_mean"])
