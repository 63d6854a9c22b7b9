"""Incremental looks: the maintained statistics equal a full recomputation after every step.

Property-based (Hypothesis; ``HYPOTHESIS_PROFILE=ci`` fixes the seed): random programs of
exposures, events (late, duplicate, out of window, before exposure, for units never exposed),
looks, erasure, retention, pause/resume and a metric added to the policy midway, on the memory
twin, SQLite and PostgreSQL. After every look the maintained totals and per-day series must equal
the full recomputation at the same watermark.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abkit.core.increments import DailySummaries, Watermark, differences, metric_key
from abkit.core.metrics import Metric
from abkit.core.model import Event, Exposure
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.errors import ConflictError
from abkit.ports import Store
from abkit.services.experiments import ExperimentService
from abkit.services.privacy import PrivacyService
from abkit.services.statistics import StatisticsService
from abkit.store import increments
from abkit.store.memory import MemoryStore
from abkit.store.sql import SqlStore
from tests.helpers import Clock

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)  # two hours before midnight: days cross early
KEY = "exp"
ARMS = ("control", "treatment", "treatment-b")
METRICS = [
    Metric("conversion", "binary", window_seconds=86400, cuped_lookback_seconds=86400),
    Metric("converted", "binary", event="conversion"),
    Metric("revenue", "continuous", cuped_lookback_seconds=2 * 86400),
    Metric("sessions", "count", event="session"),
    Metric("revenue_per_session", "ratio", event="revenue", denominator="session"),
]
LATER = Metric("revenue_6h", "continuous", event="revenue", window_seconds=6 * 3600)
EVENT_NAMES = ("conversion", "revenue", "session", "other")
UNITS = 10


def _experiment(store: Store, clock: Clock) -> ExperimentService:
    doc = {
        "key": KEY,
        "model": "m",
        "arms": [
            {"key": a, "model_version": f"m-{a}", "weight": 1 / 3, "control": a == "control"}
            for a in ARMS
        ],
    }
    policy = policy_from_dict(
        {"primary": {"metric": "conversion", "kind": "binary", "minimum_effect": 0.01}}
    )
    service = ExperimentService(store, clock)
    service.apply(experiment_from_dict(doc), actor="t", policy=policy, start=True)
    return service


def _close(a: Any, b: Any) -> bool:
    fields = a.__dataclass_fields__
    scale = max(1.0, *(abs(float(getattr(a, f))) for f in fields))
    return type(a) is type(b) and all(
        math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9, abs_tol=1e-9 * scale)
        for f in fields
    )


def assert_same_series(got: list[DailySummaries], want: list[DailySummaries]) -> None:
    assert [d.day for d in got] == [d.day for d in want]
    for g, w in zip(got, want, strict=True):
        assert g.arms.keys() == w.arms.keys(), g.day
        assert all(_close(g.arms[a], w.arms[a]) for a in w.arms), (g.day, g.arms, w.arms)


def check(
    store: Store, stats: StatisticsService, metrics: list[Metric], *, days: bool = True
) -> None:
    """Refresh the maintained statistics and hold them to the full recomputation (with
    ``days``, the per-day series too -- which dates the first look's totals)."""
    maintained = stats.refresh(KEY, metrics)
    marks = {maintained.states[m.name].watermark for m in metrics}
    assert len(marks) == 1
    (mark,) = marks
    with store.transaction() as tx:
        full = tx.analysis.summaries(KEY, metrics, upto=mark)
    assert differences(maintained.summaries, full) == []
    if not days:
        return
    for metric in metrics:
        got = stats.daily(KEY, metric)  # dates the first look's totals, at most once
        assert stats.refresh(KEY, [metric]).states[metric.name].watermark == mark
        with store.transaction() as tx:
            assert_same_series(got, tx.analysis.daily(KEY, metric, upto=mark))


unit_ids = st.integers(0, UNITS - 1)
expose = st.tuples(
    st.just("expose"),
    st.lists(st.tuples(unit_ids, st.sampled_from(ARMS), st.integers(0, 3 * 24 * 60)), max_size=5),
)
events = st.tuples(
    st.just("events"),
    st.lists(
        st.tuples(
            st.integers(-1, UNITS - 1),  # -1: a unit never exposed
            st.sampled_from(EVENT_NAMES),
            st.integers(-3 * 24 * 60, 4 * 24 * 60),  # minutes from the exposure
            st.sampled_from([1.0, 2.5, 0.1, 1e3, 7.25]),
            st.booleans(),  # send an earlier event id again
        ),
        max_size=6,
    ),
)
others = st.one_of(
    st.tuples(st.just("forget"), unit_ids),
    st.tuples(st.just("prune"), st.integers(1, 6)),
    st.sampled_from([("pause",), ("start",), ("add_metric",)]),
)
# Rounds of exposures and events, each ending in a look, now and then with another step
# before the look.
rounds = st.lists(
    st.tuples(expose, events, st.lists(others, max_size=1), st.booleans()), min_size=2, max_size=8
)


def flatten(program: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for exposures, events, other, events_first in program:
        steps += [events, exposures] if events_first else [exposures, events]
        steps += [*other, ("look",)]
    return steps


def run_program(store: Store, program: list[tuple[Any, ...]], full_share: float = math.inf) -> None:
    """Run the steps; by default every look is incremental (``full_share``: the share of new
    rows past which a look recomputes in full instead)."""
    clock = Clock(T0 + timedelta(days=5))
    experiments = _experiment(store, clock)
    privacy = PrivacyService(store, clock)
    stats = StatisticsService(store, clock, full_share=full_share)
    metrics = list(METRICS)
    exposed_at: dict[str, datetime] = {}
    sent: list[Event] = []
    looks = 0
    for step in program:
        kind = step[0]
        if kind == "expose":
            rows = [
                Exposure(KEY, f"u{u}", arm, f"m-{arm}", "c" * 16, T0 + timedelta(minutes=m))
                for u, arm, m in step[1]
            ]
            with store.transaction() as tx:
                tx.exposures.add(rows)
                for r in rows:
                    stored = tx.exposures.get(KEY, r.unit_id)
                    assert stored is not None
                    exposed_at[r.unit_id] = stored.exposed_at
        elif kind == "events":
            batch = []
            for u, name, offset, value, again in step[1]:
                if again and sent:
                    batch.append(sent[(u + offset) % len(sent)])
                    continue
                unit = f"u{u}" if u >= 0 else "never"
                at = exposed_at.get(unit, T0) + timedelta(minutes=offset)
                batch.append(Event(f"e{len(sent)}", unit, name, value, at))
                sent.append(batch[-1])
            with store.transaction() as tx:
                tx.events.add(batch)
        elif kind == "look":
            looks += 1
            check(store, stats, metrics, days=looks % 2 == 0)
        elif kind == "forget":
            privacy.forget(f"u{step[1]}", actor="t")
            exposed_at.pop(f"u{step[1]}", None)
        elif kind == "prune":
            privacy.prune(timedelta(days=step[1]), actor="t", include_running=True)
            exposed_at = {
                u: t for u, t in exposed_at.items() if t >= clock.now() - timedelta(days=step[1])
            }
        elif kind in ("pause", "start"):
            with contextlib.suppress(ConflictError):  # already paused / running
                getattr(experiments, kind)(KEY, actor="t")
        elif kind == "add_metric" and LATER not in metrics:
            metrics.append(LATER)
    check(store, stats, metrics)


PROGRAMS = rounds.map(flatten)


@settings(max_examples=300, deadline=None)
@given(program=PROGRAMS)
def test_memory_twin_maintains_exactly(program: list[tuple[Any, ...]]) -> None:
    run_program(MemoryStore(), program)


@settings(max_examples=100, deadline=None)
@given(program=PROGRAMS, full_share=st.sampled_from([0.0, 0.5, 2.0]))
def test_looks_that_fall_back_to_the_full_pass_stay_exact(
    program: list[tuple[Any, ...]], full_share: float
) -> None:
    run_program(MemoryStore(), program, full_share)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    program=PROGRAMS,
    full_share=st.sampled_from([math.inf, math.inf, math.inf, 0.5]),
    lookup_share=st.sampled_from([0.0, math.inf]),
)
def test_sql_stores_maintain_exactly(
    fresh_sql_store: Callable[[], SqlStore],
    program: list[tuple[Any, ...]],
    full_share: float,
    lookup_share: float,
) -> None:
    # PostgreSQL's two plans for a look (a parallel semi-join when many units arrived, unit-ordered
    # lookups when few): the share that picks one is set so that each program runs under both.
    store = fresh_sql_store()
    try:
        with mock.patch.object(increments, "LOOKUP_SHARE", lookup_share):
            run_program(store, program, full_share)
    finally:
        store.close()


def test_retention_drops_a_state_whose_totals_are_not_yet_dated(store: Store) -> None:
    # Found by the property test: the state's dated rows start on day 4 (u4), a later look adds
    # u0, exposed on day 1, to its undated totals; pruning day 1 must not leave u0 counted.
    run_program(
        store,
        [
            ("expose", [(4, "control", 3982)]),
            ("look",),  # the first look's totals: undated
            ("look",),  # a look that dates them (day 4)
            ("expose", [(0, "control", 0)]),
            ("look",),  # u0 in undated totals
            ("prune", 4),
            ("look",),
        ],
    )


def test_a_long_history_with_late_and_duplicate_events(store: Store) -> None:
    """One fixed program long enough to cross several looks of each kind."""
    program: list[tuple[Any, ...]] = []
    for r in range(6):
        program.append(
            ("expose", [(u, ARMS[(u + r) % 3], 60 * (u + 5 * r)) for u in range(r, UNITS)])
        )
        program.append(
            (
                "events",
                [
                    (u, EVENT_NAMES[(u + r) % 4], (u * 97 + r * 331) % 5000 - 1500, 2.5, r % 2 == 1)
                    for u in range(-1, UNITS)
                ],
            )
        )
        program.append(("look",))
        if r == 2:
            program += [("add_metric",), ("forget", 3), ("pause",), ("look",), ("start",)]
        if r == 4:
            program += [("prune", 4), ("look",)]
    run_program(store, program)


def test_first_look_then_nothing_new_reads_nothing(store: Store) -> None:
    clock = Clock(T0)
    stats = StatisticsService(store, clock)
    with store.transaction() as tx:
        tx.exposures.add([Exposure(KEY, "a", "control", "m", "c" * 16, T0)])
        tx.events.add([Event("e1", "a", "revenue", 3.0, T0 + timedelta(hours=1))])
    first = stats.refresh(KEY, METRICS)
    assert set(first.advanced) == {m.name for m in METRICS}
    again = stats.refresh(KEY, METRICS)
    assert again.advanced == () and again.summaries == first.summaries
    assert first.summaries["revenue"]["control"].sum == 3.0


def test_two_workers_one_wins_the_other_sees_its_watermark(store: Store) -> None:
    """Both compute from the same state; the second save finds the version moved and starts over
    from the committed watermark instead of adding the same events twice."""
    clock = Clock(T0)
    with store.transaction() as tx:
        tx.exposures.add([Exposure(KEY, "a", "control", "m", "c" * 16, T0)])
    stats = StatisticsService(store, clock)
    stats.refresh(KEY, METRICS[2:3])
    with store.transaction() as tx:
        tx.events.add([Event("e1", "a", "revenue", 3.0, T0 + timedelta(hours=1))])
        state = tx.maintained.load(KEY)[metric_key(METRICS[2])]
    with store.transaction() as tx:
        mark = tx.maintained.watermark()
    with store.transaction() as tx:
        changes = tx.maintained.changes(KEY, METRICS[2:3], state.watermark, mark, days=False)
    stats.refresh(KEY, METRICS[2:3])  # the other worker wins
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.maintained.save(
            KEY,
            METRICS[2],
            changes["revenue"],
            expected_version=state.version,
            watermark=mark,
            dated=state.dated,
            now=T0,
        )
    final = stats.refresh(KEY, METRICS[2:3])
    assert final.states["revenue"].watermark == mark
    assert final.summaries["revenue"]["control"].sum == 3.0  # once, not twice


def test_concurrent_refreshes_on_postgresql_count_everything_once(pg_url: str) -> None:
    """Two workers with their own connections refresh while rows keep arriving."""
    stores = [SqlStore.from_url(pg_url) for _ in range(3)]
    writer, *workers = stores
    clock = Clock(T0)
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(60):
                with writer.transaction() as tx:
                    tx.exposures.add([Exposure(KEY, f"u{i}", ARMS[i % 3], "m", "c" * 16, T0)])
                    tx.events.add(
                        [
                            Event(
                                f"e{i}-{k}",
                                f"u{(i * 7 + k) % (i + 1)}",
                                "revenue",
                                1.0 + k,
                                T0 + timedelta(minutes=k),
                            )
                            for k in range(3)
                        ]
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def look(store: SqlStore) -> None:
        stats = StatisticsService(store, clock)
        try:
            while not done.is_set():
                stats.refresh(KEY, METRICS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=look, args=(s,)) for s in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    check(writer, StatisticsService(writer, clock), METRICS)
    for s in stores:
        s.close()


def test_the_watermark_waits_for_ingestion_in_flight_on_postgresql(pg_url: str) -> None:
    """A sequence hands out numbers in call order, not commit order: a transaction that drew
    number 1 and commits after number 2 must not be passed by a watermark."""
    slow, fast, reader = (SqlStore.from_url(pg_url) for _ in range(3))
    clock = Clock(T0)
    stats = StatisticsService(reader, clock)
    started, release = threading.Event(), threading.Event()
    result: list[Watermark] = []

    def slow_writer() -> None:
        with slow.transaction() as tx:
            tx.exposures.add([Exposure(KEY, "slow", "control", "m", "c" * 16, T0)])
            started.set()
            release.wait(10)

    t = threading.Thread(target=slow_writer)
    t.start()
    started.wait(10)
    with fast.transaction() as tx:  # drew its number after the slow one, commits first
        tx.exposures.add([Exposure(KEY, "fast", "control", "m", "c" * 16, T0)])

    def mark() -> None:
        with reader.transaction() as tx:
            result.append(tx.maintained.watermark())

    waiter = threading.Thread(target=mark)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive(), "the watermark must wait for the transaction in flight"
    release.set()
    t.join(10)
    waiter.join(10)
    assert result == [Watermark(2, 0)]
    assert stats.refresh(KEY, METRICS[:1]).summaries["conversion"]["control"].n == 2
    for s in (slow, fast, reader):
        s.close()
