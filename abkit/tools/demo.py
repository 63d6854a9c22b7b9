"""``abkit demo``: the whole story on the embedded store, through a real gRPC channel.

An experiment compares a ranking model's live version (``ranker-v1``) with a candidate
(``ranker-v2``): conversion is the primary metric, latency a guardrail (5 % tolerated). The gRPC
server and the decision worker run in this process on a fresh SQLite file. Simulated users are
assigned over gRPC, the calling "service" routes on the model version, and each user's latency
and (maybe) conversion are tracked back. The worker looks every two seconds and the demo prints
each look, until the worker decides:

* ``--scenario promote`` (default): v2 truly converts better -> **promote**, v2 goes live;
* ``--scenario harmful``: v2 converts better but is 15 % slower -> **rollback** on the guardrail;
* ``--scenario aa``: v2 behaves exactly like v1 -> **stop, inconclusive** at the maximum duration.

``--seed`` fixes the simulated users (ids, platforms, conversions, latencies).
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from abkit.client import Client, TrackEvent
from abkit.config import Settings
from abkit.errors import ValidationError
from abkit.infra import telemetry
from abkit.ports import DecisionRecord
from abkit.rpc.server import build_server
from abkit.runtime import Runtime
from abkit.specfile import parse_document
from abkit.store import migrate
from abkit.store.engine import create_store_engine, normalize_url
from abkit.worker import Worker

EXPERIMENT_KEY = "demo-ranker"
DEMO_EXPERIMENT = """
key: demo-ranker
name: Ranker v2 against v1 (demo)
model: ranker
arms:
  - {key: control, model_version: ranker-v1, weight: 0.5, control: true}
  - {key: candidate, model_version: ranker-v2, weight: 0.5}
policy:
  primary: {metric: conversion, kind: binary, direction: increase, minimum_effect: 0.01}
  guardrails:
    - {metric: latency_ms, kind: continuous, direction: decrease, margin: 0.05, relative: true}
  alpha: 0.05
  min_units_per_arm: 500
  max_duration: 30s
  look_interval: 2s
"""
PLATFORMS = ("web", "ios", "android")


@dataclass(frozen=True, slots=True)
class Scenario:
    conversion: dict[str, float]  # per model version
    latency_ms: dict[str, float]
    expect: str


SCENARIOS = {
    "promote": Scenario(
        {"ranker-v1": 0.10, "ranker-v2": 0.16}, {"ranker-v1": 120, "ranker-v2": 118}, "promote"
    ),
    "harmful": Scenario(
        {"ranker-v1": 0.10, "ranker-v2": 0.12}, {"ranker-v1": 120, "ranker-v2": 138}, "rollback"
    ),
    "aa": Scenario(
        {"ranker-v1": 0.10, "ranker-v2": 0.10},
        {"ranker-v1": 120, "ranker-v2": 120},
        "stop_inconclusive",
    ),
}


def _fresh_sqlite(url: str) -> None:
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise ValidationError(
            "--database-url", "the demo recreates its store: give a SQLite file URL"
        )
    if parsed.database and parsed.database != ":memory:":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(parsed.database + suffix).unlink(missing_ok=True)
        shutil.rmtree(parsed.database + "-spool", ignore_errors=True)


class Traffic:
    """Simulated users of the calling service, sent through the abkit client until told to stop."""

    def __init__(self, address: str, scenario: Scenario, seed: int) -> None:
        self._client = Client(address, timeout=5)
        self._scenario = scenario
        self._seed = seed
        self._stop = threading.Event()
        self.users = 0
        self._lock = threading.Lock()

    def _visit(self, i: int) -> None:
        rng = random.Random(f"{self._seed}:{i}")
        unit = f"user-{i:06d}"
        answer = self._client.assign(
            unit,
            EXPERIMENT_KEY,
            default="ranker-v1",
            attributes={"platform": rng.choice(PLATFORMS)},
        )
        version = answer.model_version  # the service routes on this
        latency = max(1.0, rng.gauss(self._scenario.latency_ms[version], 25.0))
        events = [TrackEvent(unit, "latency_ms", latency)]
        if rng.random() < self._scenario.conversion[version]:
            events.append(TrackEvent(unit, "conversion"))
        self._client.track_many(events)

    def _lane(self, lane: int, lanes: int) -> None:
        i = lane
        while not self._stop.is_set():
            self._visit(i)
            with self._lock:
                self.users += 1
            i += lanes

    def run(self, lanes: int = 6) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="demo-user")
        for lane in range(lanes):
            pool.submit(self._lane, lane, lanes)
        return pool

    def stop(self, pool: ThreadPoolExecutor) -> None:
        self._stop.set()
        pool.shutdown(wait=True)
        self._client.close()


def _line(record: DecisionRecord, users: int) -> str:
    snap = record.snapshot
    units = snap.get("units") or {}
    parts = [
        f"look {record.look:>2}",
        f"{users:>6,} users",
        f"units {'/'.join(f'{n:,}' for n in units.values())}",
    ]
    for c in snap.get("comparisons", []):
        if c["estimate"] is None:
            continue
        scale = 100.0 if c["relative"] else 1.0
        unit = "%" if c["relative"] else ""
        low = "-inf" if c["ci_low"] is None else f"{c['ci_low'] * scale:+.3g}{unit}"
        high = "+inf" if c["ci_high"] is None else f"{c['ci_high'] * scale:+.3g}{unit}"
        parts.append(f"{c['metric']} {c['estimate'] * scale:+.3g}{unit} [{low}, {high}]")
    return "  ".join(parts) + f"  -> {record.action}"


def run_demo(
    *,
    users: int | None = None,
    seed: int,
    database_url: str,
    echo: Callable[[str], None],
    scenario: str = "promote",
    timeout: float = 55.0,
) -> str:
    """Run one scenario; returns the final action (promote, rollback, stop_inconclusive)."""
    chosen = SCENARIOS[scenario]
    _fresh_sqlite(database_url)
    settings = Settings(
        database_url=database_url,
        writer_flush_seconds=0.1,
        config_refresh_seconds=0.5,
        worker_tick_seconds=0.25,
        actor="demo",
    )
    engine = create_store_engine(database_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    spec = parse_document(DEMO_EXPERIMENT, "demo")
    runtime = Runtime.from_settings(settings)
    runtime.experiments.apply(spec.experiment, actor="demo", policy=spec.policy, start=True)
    runtime.start()
    tel = telemetry.build(settings)
    server = build_server(settings, runtime, tel, address="127.0.0.1:0")
    server.start()
    worker = Worker(runtime.decisions, tel.tracer(), tick_seconds=settings.worker_tick_seconds)
    control, candidate = spec.experiment.arms
    echo(
        f"abkit demo, scenario {scenario!r}: {control.model_version} (control) against "
        f"{candidate.model_version}; primary metric conversion (+1 point worth shipping), "
        "guardrail latency (5 % tolerated); a look every 2 s"
    )
    echo(f"store {database_url}, gRPC on {server.address}, seed {seed}")
    traffic = Traffic(server.address, chosen, seed)
    pool = traffic.run()
    worker.start()
    started = time.monotonic()
    seen = 0
    final: DecisionRecord | None = None
    try:
        while time.monotonic() - started < timeout and final is None:
            time.sleep(0.2)
            history = [d for d in runtime.experiments.history(EXPERIMENT_KEY) if d.look is not None]
            for record in history[seen:]:
                echo(_line(record, traffic.users))
                if record.action in ("promote", "rollback", "stop_inconclusive"):
                    final = record
            seen = len(history)
            if users is not None and traffic.users >= users and final is None:
                continue
    finally:
        traffic.stop(pool)
        worker.stop()
        server.stop(grace=2)
        runtime.close()
        tel.shutdown()
    elapsed = time.monotonic() - started
    if final is None:
        echo(f"no decision within {timeout:.0f} s ({traffic.users:,} users)")
        return "none"
    echo("")
    echo(
        f"decision after {elapsed:.1f} s and {traffic.users:,} users: {final.action.upper()}"
        + (f" {final.arm_key}" if final.arm_key else "")
    )
    for reason in final.reason.split("; "):
        echo(f"  - {reason}")
    echo("")
    echo(f"audit trail:   abkit --database-url {database_url} experiment history {EXPERIMENT_KEY}")
    echo(f"experiment:    abkit --database-url {database_url} experiment show {EXPERIMENT_KEY}")
    return final.action
