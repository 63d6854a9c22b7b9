"""Stream mode for real: NATS JetStream between the gRPC servers and PostgreSQL.

Every test uses a stream of its own (its own name and subjects) on the shared NATS server, or
NATS servers of its own when it must kill one: a single server for the outage tests and the
session's 3-node JetStream cluster for the node-loss test (tests/nats_support.py).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from abkit.config import Settings
from abkit.core.rows import RowKind, decode_exposures, encode_events, encode_exposures
from abkit.infra.loader import open_loader, read_lag
from abkit.infra.stream import StreamSettings, ensure_stream, headers
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import GrpcServer, build_server
from abkit.runtime import Runtime
from abkit.store.engine import create_store_engine
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.nats_support import (
    NatsCluster,
    NatsServer,
    free_port,
    messages,
    run,
    stream_env,
    unique_stream,
    wait_jetstream,
)
from tests.serving import (
    Load,
    abkit_process,
    load_until_killed,
    missing_rows,
    serve,
    start_experiment,
)
from tests.unit.test_stream_messages import event, exposure


def settings_for(url: str, stream: StreamSettings, journal: Path, **changes: Any) -> Settings:
    env = stream_env(stream)
    return Settings(
        database_url=url,
        spool_dir=str(journal),
        stream_url=env["ABKIT_STREAM_URL"],
        stream_name=stream.name,
        stream_subject_prefix=stream.prefix,
        stream_replicas=stream.replicas,
        loader_durable=env["ABKIT_LOADER_DURABLE"],
        config_refresh_seconds=0.2,
        **changes,
    )


def serve_in_process(settings: Settings) -> tuple[Runtime, GrpcServer]:
    runtime = Runtime.from_settings(settings)
    start_experiment(runtime.store)
    runtime.start()
    server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    return runtime, server


def stored(url: str, table: str = "exposures") -> tuple[int, int]:
    """(rows, distinct keys) of ``table``: equal when nothing is duplicated."""
    column = "unit_id" if table == "exposures" else "event_id"
    engine = create_store_engine(url)
    with engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text(f"SELECT count(*), count(DISTINCT {column}) FROM {table}")
        ).one()
    engine.dispose()
    return int(count), int(distinct)


async def _publish(stream: StreamSettings, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    import nats

    nc = await nats.connect(list(stream.servers))
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream)  # as every server and loader does at start
        for subject, body, h in items:
            await js.publish(subject, body, headers=h, timeout=10)
    finally:
        await nc.close()


def publish(stream: StreamSettings, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    run(_publish(stream, items))


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_stream_mode_publishes_before_answering_and_the_loader_stores_each_row_once(
    pg_url: str, stream_settings: StreamSettings, tmp_path: Path
) -> None:
    settings = settings_for(pg_url, stream_settings, tmp_path / "journal")
    runtime, server = serve_in_process(settings)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            batch = pb.AssignBatchRequest(
                requests=[pb.AssignRequest(unit_id=f"u{i}") for i in range(300)]
            )
            replies = stub.AssignBatch(batch, timeout=10)
            exposed = [
                f"u{i}" for i, r in enumerate(replies.responses) if r.assignments[0].in_experiment
            ]
            for i in range(20):
                stub.Track(
                    pb.TrackRequest(unit_id=f"u{i}", metric="conversion", event_id=f"e{i}"),
                    timeout=5,
                )
        # Acknowledged means: in the stream already. Nothing is in the database yet.
        assert stored(pg_url) == (0, 0)
        rows = messages(stream_settings, stream_settings.subject(RowKind.EXPOSURES))
        events = messages(stream_settings, stream_settings.subject(RowKind.EVENTS))
        assert sum(int(m.headers["Abkit-Rows"]) for m in rows) == len(exposed) == 300
        assert sum(int(m.headers["Abkit-Rows"]) for m in events) == 20
        for m in rows + events:
            assert m.headers["Abkit-Schema"] == "1"
            assert m.headers["Abkit-Kind"] in ("exposures", "events")
        assert len({m.headers["Nats-Msg-Id"] for m in rows + events}) == len(rows + events)
        assert len(rows) < 300  # many exposures a message: one AssignBatch, one group commit

        store = SqlStore.from_url(pg_url)
        loader = open_loader(settings, store)
        assert missing_rows(store, exposed, [f"e{i}" for i in range(20)], timeout=30) == ([], [])
        assert loader.stats().written == {"exposures": 300, "events": 20}
        # A retried publish (same Nats-Msg-Id) is stored once by the stream...
        first = rows[0]
        publish(stream_settings, [(first.subject, first.data, dict(first.headers))])
        assert len(messages(stream_settings, first.subject)) == len(rows)
        # ...and the same rows under another id (a forward repeated after a crash) are stored
        # once by the database: the loader counts them as duplicates.
        publish(
            stream_settings,
            [(first.subject, first.data, {**first.headers, "Nats-Msg-Id": "again"})],
        )
        again = int(first.headers["Abkit-Rows"])
        wait_for(lambda: loader.stats().duplicates == again, 30, "the duplicates")
        assert stored(pg_url) == (300, 300)
        wait_for(lambda: read_lag(settings) == 0, 30, "lag 0")
        assert loader.close(10)
        store.close()
    finally:
        server.stop(grace=1)
        assert runtime.close(10)


def test_abkit_loader_and_its_health_probe(
    pg_url: str, stream_settings: StreamSettings, tmp_path: Path
) -> None:
    env = {"ABKIT_DATABASE_URL": pg_url, **stream_env(stream_settings)}
    no_stream = abkit_process(["loader"], {"ABKIT_DATABASE_URL": pg_url, "ABKIT_STREAM_URL": ""})
    _, err = no_stream.communicate(timeout=60)
    assert no_stream.returncode == 2 and "ABKIT_STREAM_URL" in err
    health = _health(env)
    assert health.returncode == 1 and "no loader has run yet" in health.stderr

    settings = settings_for(pg_url, stream_settings, tmp_path / "journal")
    runtime, server = serve_in_process(settings)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            for i in range(5):
                stub.Assign(pb.AssignRequest(unit_id=f"h{i}"), timeout=5)
                stub.Track(
                    pb.TrackRequest(unit_id=f"h{i}", metric="conversion", event_id=f"h{i}"),
                    timeout=5,
                )
    finally:
        server.stop(grace=1)
        assert runtime.close(10)
    loader = abkit_process(["loader"], env)
    try:
        assert loader.stdout is not None
        assert "abkit loader" in loader.stdout.readline()
        store = SqlStore.from_url(pg_url)
        assert missing_rows(store, [f"h{i}" for i in range(5)], [f"h{i}" for i in range(5)]) == (
            [],
            [],
        )
        store.close()
        wait_for(lambda: _health(env).returncode == 0, 30, "a healthy loader")
        assert "SERVING (lag 0)" in _health(env).stdout
    finally:
        loader.send_signal(signal.SIGTERM)
        _, err = loader.communicate(timeout=60)
    assert loader.returncode == 0, err
    # Messages pile up while no loader runs: over the bound, the probe says so.
    rows = encode_exposures([exposure(f"p{i}") for i in range(3)])
    subject = stream_settings.subject(RowKind.EXPOSURES)
    publish(
        stream_settings,
        [(subject, rows.encode(), headers(RowKind.EXPOSURES, 3, f"pile-{i}")) for i in range(3)],
    )
    lagging = _health({**env, "ABKIT_LOADER_MAX_LAG": "2"})
    assert lagging.returncode == 1
    assert "3 messages wait for the loaders (bound 2)" in lagging.stderr
    assert _health({**env, "ABKIT_LOADER_MAX_LAG": "3"}).returncode == 0


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = abkit_process(["health", "loader"], env)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_kill_9_of_the_server_in_stream_mode_loses_nothing_acknowledged(
    pg_url: str, stream_settings: StreamSettings, tmp_path: Path
) -> None:
    """8 callers, a new unit every call, 5 s, then SIGKILL: every exposure and event that was
    answered is in PostgreSQL once the loader has caught up."""
    store = SqlStore.from_url(pg_url)
    start_experiment(store)
    env = stream_env(stream_settings)
    loader = abkit_process(["loader"], {"ABKIT_DATABASE_URL": pg_url, **env})
    proc, port = serve(pg_url, tmp_path / "journal", env)
    load = load_until_killed(port, seconds=5.0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    exposed, tracked = load.stop()
    # The restarted server forwards whatever its journal holds (nothing, unless NATS was slow).
    restarted, _ = serve(pg_url, tmp_path / "journal", env)
    missing = missing_rows(store, exposed, tracked, timeout=90)
    for p in (restarted, loader):
        p.send_signal(signal.SIGTERM)
    for p in (restarted, loader):
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store.close()
    assert len(exposed) > 500 and len(tracked) > 500
    assert missing == ([], [])
    count, distinct = stored(pg_url)
    assert count == distinct >= len(exposed)


def test_kill_9_of_a_loader_mid_batch_loses_and_duplicates_nothing(
    pg_url: str, stream_settings: StreamSettings
) -> None:
    total, per_message = 60_000, 200
    subject = stream_settings.subject(RowKind.EXPOSURES)
    publish(
        stream_settings,
        [
            (
                subject,
                encode_exposures(
                    [exposure(f"m{i}") for i in range(start, start + per_message)]
                ).encode(),
                headers(RowKind.EXPOSURES, per_message, f"batch-{start}"),
            )
            for start in range(0, total, per_message)
        ],
    )
    env = {
        "ABKIT_DATABASE_URL": pg_url,
        "ABKIT_LOADER_BATCH": "64",
        "ABKIT_LOADER_ACK_WAIT_SECONDS": "2",
        **stream_env(stream_settings),
    }
    first = abkit_process(["loader"], env)
    settings = Settings.from_env(env)
    # Kill it while it holds a fetched batch it has not acknowledged, with rows already in.
    wait_for(lambda: stored(pg_url)[0] > 0 and _ack_pending(settings) > 0, 60, "a batch in hand")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert stored(pg_url)[0] < total
    second = abkit_process(["loader"], env)
    try:
        wait_for(lambda: stored(pg_url)[0] == total, 120, "every row")
        wait_for(lambda: read_lag(settings) == 0, 30, "lag 0")
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert stored(pg_url) == (total, total)
    # The batch the killed loader held was handed out again: more deliveries than messages.
    assert _consumer(settings).delivered.consumer_seq > total // per_message


async def _consumer_info(settings: Settings) -> Any:
    import nats

    nc = await nats.connect(settings.stream_url.split(","))
    try:
        return await nc.jetstream().consumer_info(settings.stream_name, settings.loader_durable)
    finally:
        await nc.close()


def _consumer(settings: Settings) -> Any:
    return run(_consumer_info(settings))


def _ack_pending(settings: Settings) -> int:
    try:
        return int(_consumer(settings).num_ack_pending)
    except Exception:
        return 0


def test_poison_messages_are_dead_lettered_with_a_reason_and_the_stream_keeps_flowing(
    pg_url: str, stream_settings: StreamSettings, tmp_path: Path
) -> None:
    exposures = stream_settings.subject(RowKind.EXPOSURES)
    events = stream_settings.subject(RowKind.EVENTS)
    good = encode_exposures([exposure("before")])
    two = encode_exposures([exposure("t1"), exposure("t2")])
    nan = encode_events([event("nan-1")]).replace("\t1.0\t", "\tNaN\t")
    huge = encode_exposures([exposure("x" * 1_000_000)])
    poison = [
        (exposures, b"\xff\xfe\x00 not rows", headers(RowKind.EXPOSURES, 1, "garbage")),
        (exposures, two[: len(two) - 40].encode(), headers(RowKind.EXPOSURES, 2, "truncated")),
        (exposures, good.encode(), {**headers(RowKind.EXPOSURES, 1, "v9"), "Abkit-Schema": "9"}),
        (events, nan.encode(), headers(RowKind.EVENTS, 1, "nan")),
        (exposures, huge.encode(), headers(RowKind.EXPOSURES, 1, "huge")),
    ]
    after = encode_exposures([exposure("after")])
    publish(
        stream_settings,
        [
            (exposures, good.encode(), headers(RowKind.EXPOSURES, 1, "good-1")),
            *poison,
            (exposures, after.encode(), headers(RowKind.EXPOSURES, 1, "good-2")),
        ],
    )
    settings = settings_for(pg_url, stream_settings, tmp_path / "journal")
    store = SqlStore.from_url(pg_url)
    loader = open_loader(settings, store)
    try:
        assert missing_rows(store, ["before", "after"], [], timeout=30) == ([], [])
        wait_for(lambda: loader.stats().dead_lettered == 5, 30, "five dead letters")
        wait_for(lambda: read_lag(settings) == 0, 30, "lag 0")
    finally:
        assert loader.close(10)
        store.close()
    assert stored(pg_url) == (2, 2)
    dead = messages(stream_settings, f"{stream_settings.prefix}.dead.>")
    reasons = {m.headers["Nats-Msg-Id"]: m.headers["Abkit-Reason"] for m in dead}
    assert len(dead) == 5
    by_body = {m.data[:20]: m.headers["Abkit-Reason"] for m in dead}
    assert "undecodable" in by_body[b"\xff\xfe\x00 not rows"]
    assert any("fields, expected 8" in r for r in reasons.values())  # truncated
    assert any("unknown schema version '9'" in r for r in reasons.values())
    assert any("value: must be a finite number" in r for r in reasons.values())
    assert any("unit_id: must be at most 256 bytes" in r for r in reasons.values())
    assert {m.subject for m in dead} == {
        f"{stream_settings.prefix}.dead.exposures",
        f"{stream_settings.prefix}.dead.events",
    }


def test_nats_outage_the_journal_keeps_answers_durable_and_republishes_in_order(
    pg_url: str, tmp_path: Path
) -> None:
    nats_server = NatsServer(tmp_path / "nats", "solo")
    nats_server.start()
    stream = unique_stream([nats_server.url])
    settings = settings_for(pg_url, stream, tmp_path / "journal")
    runtime, server = serve_in_process(settings)
    try:
        load = Load(server.port, lanes=4)
        time.sleep(1.5)
        nats_server.kill()  # under load; the server must go on answering
        time.sleep(2.5)
        assert load.failures == []
        nats_server.start()
        time.sleep(2.0)
        exposed, tracked = load.stop()
        assert load.failures == []
        assert runtime.flush(60), runtime.ingest.stats()
        sink = runtime.ingest.sink.stats()  # type: ignore[union-attr]
        assert sink.journaled_rows > 0 and sink.forwarded_rows >= sink.journaled_rows
    finally:
        server.stop(grace=1)
        assert runtime.close(20)
    # Per process, rows reached the stream in the order they were accepted (first copies:
    # a publish whose acknowledgement was lost may be stored again by the forwarder).
    seen: dict[str, int] = {}
    for m in messages(stream, stream.subject(RowKind.EXPOSURES)):
        for e in decode_exposures(m.data.decode()):
            seen.setdefault(e.unit_id, len(seen))
    for lane in range(4):
        order = [seen[u] for u in exposed if u.startswith(f"k{lane}-")]
        assert order == sorted(order), f"lane {lane} out of order"
    store = SqlStore.from_url(pg_url)
    loader = open_loader(settings, store)
    try:
        assert missing_rows(store, exposed, tracked, timeout=60) == ([], [])
    finally:
        loader.close(10)
        store.close()
        nats_server.stop()
    assert len(exposed) > 200


def test_the_journal_bound_is_back_pressure_while_nats_is_away(pg_url: str, tmp_path: Path) -> None:
    port = free_port()  # nobody listens yet
    stream = unique_stream([f"nats://127.0.0.1:{port}"])
    settings = settings_for(pg_url, stream, tmp_path / "journal", spool_max_mb=1)
    runtime, server = serve_in_process(settings)
    acknowledged: list[str] = []
    refused = None
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            for round_ in range(200):
                units = [f"b{round_}-{i}" for i in range(1000)]
                request = pb.AssignBatchRequest(
                    requests=[pb.AssignRequest(unit_id=u) for u in units]
                )
                try:
                    stub.AssignBatch(request, timeout=10)
                except grpc.RpcError as exc:
                    refused = exc
                    break
                acknowledged += units
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
        assert len(acknowledged) >= 1000
        nats_server = NatsServer(tmp_path / "nats", "late", port=port)
        nats_server.start()
        wait_jetstream(nats_server.url)
        assert runtime.flush(60)
    finally:
        server.stop(grace=1)
        assert runtime.close(20)
    try:
        in_stream = {
            e.unit_id
            for m in messages(stream, stream.subject(RowKind.EXPOSURES))
            for e in decode_exposures(m.data.decode())
        }
        assert set(acknowledged) <= in_stream
    finally:
        nats_server.stop()


def test_a_cluster_node_killed_under_load_loses_and_duplicates_nothing(
    pg_url: str, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """A stream of 3 replicas on the session's 3-node cluster; the node leading the stream is
    SIGKILLed while 8 callers write: every acknowledged row ends up in PostgreSQL once."""
    stream = unique_stream(nats_cluster.urls, replicas=3)
    store = SqlStore.from_url(pg_url)
    start_experiment(store)
    env = stream_env(stream)
    server, port = serve(pg_url, tmp_path / "journal", env)
    loader = abkit_process(["loader"], {"ABKIT_DATABASE_URL": pg_url, **env})
    killed = None
    try:
        load = Load(port, lanes=8)
        time.sleep(2.0)
        killed = nats_cluster.node(_stream_leader(stream))
        killed.kill()
        at_kill = len(load.tracked)
        time.sleep(4.0)
        exposed, tracked = load.stop()
        assert len(tracked) > at_kill + 100  # answers went on through the failover
        assert load.failures == []
        missing = missing_rows(store, exposed, tracked, timeout=90)
    finally:
        for p in (server, loader):
            p.send_signal(signal.SIGTERM)
        for p in (server, loader):
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        if killed is not None:
            killed.start()
        store.close()
    assert len(exposed) > 500 and len(tracked) > 500
    assert missing == ([], [])
    count, distinct = stored(pg_url)
    assert count == distinct
    events, distinct_events = stored(pg_url, "events")
    assert events == distinct_events >= len(tracked)
    from tests.nats_support import delete_stream

    wait_jetstream(killed.url, timeout=60)
    delete_stream(stream)


async def _leader(stream: StreamSettings) -> str:
    import nats

    nc = await nats.connect(list(stream.servers))
    try:
        info = await nc.jetstream().stream_info(stream.name)
        return str(info.cluster.leader)
    finally:
        await nc.close()


def _stream_leader(stream: StreamSettings) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            return str(asyncio.run(_leader(stream)))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
