"""``abkit demo``: the whole path on the embedded store, through a real gRPC channel.

An experiment compares a ranking model's live version (v1) with a candidate (v2). Simulated users
are assigned over gRPC, the calling "service" routes on the model version, and users convert with
a probability that depends on the model they got (v2 is truly better); conversions are tracked
back. At the end the split and the counts in the store are printed.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from abkit import telemetry
from abkit.config import Settings
from abkit.core.model import Experiment
from abkit.errors import ValidationError
from abkit.rpc import build_server
from abkit.runtime import Runtime
from abkit.specfile import parse_document
from abkit.store import migrate
from abkit.store.engine import create_store_engine, normalize_url
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

DEMO_EXPERIMENT = """
key: demo-ranker
name: Ranker v2 against v1 (demo)
model: ranker
arms:
  - {key: control, model_version: ranker-v1, weight: 0.5, control: true}
  - {key: candidate, model_version: ranker-v2, weight: 0.5}
"""
CONVERSION_RATE = {"ranker-v1": 0.10, "ranker-v2": 0.12}
PLATFORMS = ("web", "ios", "android")


def _fresh_sqlite(url: str) -> None:
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise ValidationError(
            "--database-url", "the demo recreates its store: give a SQLite file URL"
        )
    if parsed.database and parsed.database != ":memory:":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(parsed.database + suffix).unlink(missing_ok=True)


def run_demo(*, users: int, seed: int, database_url: str, echo: Callable[[str], None]) -> None:
    _fresh_sqlite(database_url)
    settings = Settings(
        database_url=database_url,
        writer_flush_seconds=0.05,
        config_refresh_seconds=0.5,
        actor="demo",
    )
    engine = create_store_engine(database_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    experiment: Experiment = parse_document(DEMO_EXPERIMENT, "demo").experiment
    runtime = Runtime.from_settings(settings)
    runtime.experiments.apply(experiment, actor="demo", start=True)
    runtime.start()
    server = build_server(settings, runtime, telemetry.build(settings), address="127.0.0.1:0")
    server.start()
    control, candidate = experiment.arms
    echo(
        f"abkit demo: experiment {experiment.key} ({control.key} {control.model_version}, "
        f"{candidate.key} {candidate.model_version}), store {database_url}"
    )
    rng = random.Random(seed)
    plan = [(f"user-{i:05d}", rng.choice(PLATFORMS), rng.random()) for i in range(users)]
    conversions: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)

            def visit(user: tuple[str, str, float]) -> str:
                unit_id, platform, draw = user
                reply = stub.Assign(
                    pb.AssignRequest(
                        unit_id=unit_id,
                        attributes={"platform": pb.AttributeValue(string_value=platform)},
                        experiment_keys=[experiment.key],
                    ),
                    timeout=5,
                )
                version = reply.assignments[0].model_version
                if draw < CONVERSION_RATE[version]:
                    stub.Track(
                        pb.TrackRequest(unit_id=unit_id, metric="conversion", value=1.0), timeout=5
                    )
                    return str(reply.assignments[0].arm_key)
                return ""

            with ThreadPoolExecutor(max_workers=8) as pool:
                for converted_arm in pool.map(visit, plan):
                    if converted_arm:
                        conversions[converted_arm] += 1
        elapsed = time.perf_counter() - started
        runtime.flush()
        counts = runtime.experiments.exposure_counts(experiment.key)
        with runtime.store.transaction() as tx:
            events = tx.events.count()
    finally:
        server.stop(grace=2)
        runtime.close()
    echo(
        f"served {users} users through gRPC at {server.address} in {elapsed:.1f} s "
        f"({users / elapsed:,.0f} users/s, each an Assign and maybe a Track)"
    )
    total = sum(counts.values()) or 1
    header = ("arm", "model version", "units", "share", "conversions", "rate")
    echo("{:<10} {:<14} {:>6} {:>7} {:>12} {:>7}".format(*header))
    for arm in experiment.arms:
        n = counts.get(arm.key, 0)
        c = conversions[arm.key]
        echo(
            f"{arm.key:<10} {arm.model_version:<14} {n:>6} {n / total:>7.1%} {c:>12} "
            f"{(c / n if n else 0):>7.1%}"
        )
    echo(f"the store now holds {sum(counts.values())} exposures and {events} events")
    echo(f"look around: abkit --database-url {database_url} experiment show {experiment.key}")
