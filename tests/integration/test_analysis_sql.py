"""Sufficient statistics from SQL, checked by hand on a tiny data set and across backends."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from abkit.core.metrics import Metric
from abkit.core.model import Event, Exposure
from abkit.core.stats import ArmSummary, RatioSummary
from abkit.ports import Store
from abkit.store.memory import MemoryStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)


def exposure(unit: str, arm: str, at: datetime, key: str = "exp") -> Exposure:
    return Exposure(key, unit, arm, f"m-{arm}", "c" * 16, at)


def event(i: int, unit: str, metric: str, value: float, at: datetime) -> Event:
    return Event(f"ev-{i}", unit, metric, value, at)


TINY_EXPOSURES = [
    exposure("u1", "control", T0),
    exposure("u2", "control", T0 + H),
    exposure("u3", "treatment", T0),
    exposure("u4", "treatment", T0 + 2 * H),
    exposure("u5", "treatment", T0 + 25 * H),
    exposure("u1", "treatment", T0, key="other-experiment"),
]
TINY_EVENTS = [
    event(1, "u1", "conversion", 1, T0 + 10 * M),
    event(2, "u1", "revenue", 10, T0 + 20 * M),
    event(3, "u1", "revenue", 5, T0 + 26 * H),
    event(4, "u1", "revenue", 3, T0 - H),  # before exposure: only the CUPED covariate sees it
    event(5, "u1", "session", 1, T0 + 5 * M),
    event(6, "u1", "session", 1, T0 + 6 * M),
    event(7, "u2", "conversion", 1, T0),  # before u2's exposure at T0 + 1h: not counted
    event(8, "u2", "session", 1, T0 + 2 * H),
    event(9, "u3", "revenue", 7, T0 + 3 * H),
    event(10, "u3", "conversion", 1, T0 + 30 * M),
    event(11, "u3", "conversion", 1, T0 + 40 * M),
    event(12, "u5", "revenue", 4, T0 + 26 * H),
    event(13, "u9", "conversion", 1, T0 + H),  # never exposed
]

METRICS = [
    Metric("conversion", "binary"),
    Metric("conversions", "count", event="conversion"),
    Metric("revenue", "continuous"),
    Metric("revenue_24h", "continuous", event="revenue", window_seconds=86400),
    Metric("revenue_cuped", "continuous", event="revenue", cuped_lookback_seconds=7 * 86400),
    Metric("revenue_per_session", "ratio", event="revenue", denominator="session"),
]

# Computed by hand from the rows above (see the comments there).
EXPECTED = {
    "conversion": {"control": ArmSummary(2, 1, 1), "treatment": ArmSummary(3, 1, 1)},
    "conversions": {"control": ArmSummary(2, 1, 1), "treatment": ArmSummary(3, 2, 4)},
    "revenue": {"control": ArmSummary(2, 15, 225), "treatment": ArmSummary(3, 11, 65)},
    "revenue_24h": {"control": ArmSummary(2, 10, 100), "treatment": ArmSummary(3, 11, 65)},
    "revenue_cuped": {
        "control": ArmSummary(2, 15, 225, x_sum=3, x_sum_sq=9, xy_sum=45),
        "treatment": ArmSummary(3, 11, 65, 0, 0, 0),
    },
    "revenue_per_session": {
        "control": RatioSummary(2, 15, 225, 3, 5, 30),
        "treatment": RatioSummary(3, 11, 65, 0, 0, 0),
    },
}


def load(store: Store, exposures: list[Exposure], events: list[Event]) -> None:
    with store.transaction() as tx:
        tx.exposures.add(exposures)
        tx.events.add(events)


def test_hand_computed_tiny_data_set(store: Store) -> None:
    load(store, TINY_EXPOSURES, TINY_EVENTS)
    with store.transaction() as tx:
        got = tx.analysis.summaries("exp", METRICS)
        assert tx.analysis.summaries("missing", METRICS) == {m.name: {} for m in METRICS}
    assert got == EXPECTED


def test_as_of_cuts_exposures_and_events(store: Store) -> None:
    load(store, TINY_EXPOSURES, TINY_EVENTS)
    with store.transaction() as tx:
        got = tx.analysis.summaries("exp", METRICS[:3], as_of=T0 + 35 * M)
    # By then: u1 and u3 exposed; u1 converted (10 min), u3 once (30 min); u1 revenue 10.
    assert got["conversion"] == {"control": ArmSummary(1, 1, 1), "treatment": ArmSummary(1, 1, 1)}
    assert got["conversions"]["treatment"] == ArmSummary(1, 1, 1)
    assert got["revenue"] == {"control": ArmSummary(1, 10, 100), "treatment": ArmSummary(1, 0, 0)}


def test_daily_series_is_cumulative(store: Store) -> None:
    load(store, TINY_EXPOSURES, TINY_EVENTS)
    with store.transaction() as tx:
        revenue = tx.analysis.daily("exp", Metric("revenue", "continuous"))
        conversion = tx.analysis.daily("exp", Metric("conversion", "binary"))
        ratio = tx.analysis.daily("exp", METRICS[-1])
    assert [d.day for d in revenue] == [date(2026, 3, 1), date(2026, 3, 2)]
    assert revenue[0].arms == {"control": ArmSummary(2, 10, 100), "treatment": ArmSummary(2, 7, 49)}
    assert revenue[1].arms == EXPECTED["revenue"]
    assert conversion[-1].arms == EXPECTED["conversion"]
    assert ratio[-1].arms == EXPECTED["revenue_per_session"]


def random_data(seed: int, units: int = 400) -> tuple[list[Exposure], list[Event]]:
    rng = random.Random(seed)
    exposures, events = [], []
    for u in range(units):
        arm = rng.choice(["control", "treatment", "treatment-b"])
        at = T0 + timedelta(seconds=rng.randrange(0, 5 * 86400), microseconds=rng.randrange(10**6))
        exposures.append(exposure(f"user-{u}", arm, at))
        for k in range(rng.randrange(0, 6)):
            metric = rng.choice(["conversion", "revenue", "session"])
            offset = timedelta(seconds=rng.uniform(-3 * 86400, 9 * 86400))
            value = round(rng.lognormvariate(2, 1), 6) if metric == "revenue" else 1.0
            events.append(event(u * 10 + k, f"user-{u}", metric, value, at + offset))
    return exposures, events


def _close(a: object, b: object) -> bool:
    fields = a.__dataclass_fields__  # type: ignore[attr-defined]
    return type(a) is type(b) and all(
        math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9, abs_tol=1e-9) for f in fields
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_backends_agree_with_the_plain_python_reading(store: Store, seed: int) -> None:
    exposures, events = random_data(seed)
    load(store, exposures, events)
    reference = MemoryStore()
    load(reference, exposures, events)
    metrics = [
        *METRICS,
        Metric(
            "conv_48h",
            "binary",
            event="conversion",
            window_seconds=172800,
            cuped_lookback_seconds=86400,
        ),
    ]
    with store.transaction() as tx, reference.transaction() as ref:
        got, want = tx.analysis.summaries("exp", metrics), ref.analysis.summaries("exp", metrics)
        cut = T0 + timedelta(days=3, hours=5)
        got_cut = tx.analysis.summaries("exp", metrics, as_of=cut)
        want_cut = ref.analysis.summaries("exp", metrics, as_of=cut)
        for metric in (METRICS[0], METRICS[2], METRICS[-1]):
            got_days, want_days = (
                tx.analysis.daily("exp", metric),
                ref.analysis.daily("exp", metric),
            )
            assert [d.day for d in got_days] == [d.day for d in want_days]
            for g, w in zip(got_days, want_days, strict=True):
                assert g.arms.keys() == w.arms.keys()
                assert all(_close(g.arms[a], w.arms[a]) for a in w.arms), (metric.name, g.day)
    for name in want:
        assert got[name].keys() == want[name].keys() == {"control", "treatment", "treatment-b"}
        assert all(_close(got[name][a], want[name][a]) for a in want[name]), name
        assert all(_close(got_cut[name][a], want_cut[name][a]) for a in want_cut[name]), name


def test_postgresql_streams_the_analysis_in_unit_order(pg_url: str) -> None:
    """The plan that keeps a look linear in the rows (migration 0005): exposures and events, each
    read in unit order from a covering index alone, merged into a per-unit aggregate
    that needs no hash table of units and no sort -- nothing that grows with the experiment
    and spills once it outgrows work_mem."""
    import sqlalchemy as sa

    from abkit.store.analysis import SqlAnalysis
    from abkit.store.engine import create_store_engine

    engine = create_store_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO exposures (experiment_key, unit_id, arm_key, model_version, "
                    "config_checksum, exposed_at, trace_id, span_id) SELECT 'exp', 'u' || g, "
                    "CASE WHEN g % 2 = 0 THEN 'control' ELSE 'treatment' END, 'm', "
                    "'cccccccccccccccc', now(), '', '' FROM generate_series(1, 20000) AS g"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO events (event_id, unit_id, metric, value, occurred_at, trace_id, "
                    "span_id) "
                    "SELECT 'e' || g, 'u' || (g % 20000), "
                    "CASE WHEN g % 3 = 0 THEN 'conversion' ELSE 'revenue' END, 1, now(), '', '' "
                    "FROM generate_series(1, 100000) AS g"
                )
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE exposures, events"))
        with engine.begin() as conn:
            plan = SqlAnalysis(conn).plan("exp", [METRICS[0], METRICS[2]])
    finally:
        engine.dispose()
    assert "Merge Left Join" in plan, plan
    assert "Index Only Scan using pk_exposures on exposures" in plan, plan
    assert "Index Only Scan using ix_events_unit_metric_time on events" in plan, plan
    assert "GroupAggregate" in plan, plan
    # Hashing or sorting happens only at the per-arm level (a handful of groups), after the
    # per-unit aggregate: nothing under it builds a hash or sorts.
    per_unit = plan[plan.index("GroupAggregate") :]
    assert "Hash" not in per_unit and "Sort" not in per_unit, plan
