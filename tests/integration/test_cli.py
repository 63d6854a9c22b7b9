"""The `abkit` command as a user runs it: a subprocess, a real store, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "ranker-experiment.yaml"


def abkit(
    *args: str, url: str, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ABKIT_DATABASE_URL": url, "ABKIT_ACTOR": "tester"}
    result = subprocess.run(
        [sys.executable, "-m", "abkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and result.returncode != 0:
        raise AssertionError(f"abkit {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result  # type: ignore[no-any-return]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_is_idempotent_and_lifecycle_is_audited(sql_url: str) -> None:
    out = abkit("experiment", "apply", "-f", str(EXAMPLE), url=sql_url).stdout
    assert "ranker-v2 created" in out and "draft" in out
    assert "unchanged" in abkit("experiment", "apply", "-f", str(EXAMPLE), url=sql_url).stdout
    assert "running" in abkit("experiment", "start", "ranker-v2", url=sql_url).stdout
    assert "paused" in abkit("experiment", "pause", "ranker-v2", url=sql_url).stdout
    assert "running" in abkit("experiment", "resume", "ranker-v2", url=sql_url).stdout
    shown = json.loads(
        abkit("experiment", "show", "ranker-v2", "--format", "json", url=sql_url).stdout
    )
    assert shown["status"] == "running" and shown["model"] == "ranker"
    assert [a["model_version"] for a in shown["arms"]] == ["ranker-v1", "ranker-v2"]
    listed = abkit("experiment", "list", url=sql_url).stdout
    assert "ranker-v2" in listed and "control=ranker-v1" in listed
    from abkit.store.sql import SqlStore

    store = SqlStore.from_url(sql_url)
    with store.transaction() as tx:
        history = tx.decisions.list("ranker-v2")
        live = tx.models.live("ranker")
    store.close()
    assert [(d.action, d.actor) for d in history] == [
        ("create", "tester"), ("start", "tester"), ("pause", "tester"), ("resume", "tester"),
    ]  # fmt: skip
    assert live is not None and live.version == "ranker-v1"


def test_changing_a_running_experiments_arms_is_refused_with_a_way_out(
    sql_url: str, tmp_path: Path
) -> None:
    abkit("experiment", "apply", "-f", str(EXAMPLE), "--start", url=sql_url)
    changed = (
        EXAMPLE.read_text()
        .replace("weight: 0.5, control: true", "weight: 0.4, control: true")
        .replace("model_version: ranker-v2, weight: 0.5", "model_version: ranker-v2, weight: 0.6")
    )
    result = abkit("experiment", "apply", "-f", write(tmp_path, changed), url=sql_url, check=False)
    assert result.returncode == 4
    assert "arms cannot change" in result.stderr and "new experiment key" in result.stderr
    # Coverage may change (a ramp): allowed, and recorded.
    ramp = EXAMPLE.read_text().replace("coverage: 0.05 ", "coverage: 0.25 ")
    out = abkit("experiment", "apply", "-f", write(tmp_path, ramp, "ramp.yaml"), url=sql_url).stdout
    assert "updated (coverage)" in out


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("key: [unclosed", 2, "YAML syntax error"),
        ("key: e\nkey: f\n", 2, "duplicate key 'key'"),
        (
            "key: e\narms:\n - {key: c, model_version: v1, weight: 0.5, control: true}\n"
            " - {key: t, model_version: v2, weight: 0.6}\n",
            2,
            "weights must sum to 1",
        ),
        (
            "key: e\narms:\n - {key: c, model_version: v1, weight: 0.5}\n"
            " - {key: t, model_version: v2, weight: 0.5}\n",
            2,
            "exactly one arm must be the control",
        ),
        ("key: e\ncoverge: 0.1\narms: []\n", 2, "did you mean 'coverage'"),
    ],
)
def test_broken_files_exit_2_naming_the_problem(
    sql_url: str, tmp_path: Path, text: str, code: int, words: str
) -> None:
    result = abkit("experiment", "apply", "-f", write(tmp_path, text), url=sql_url, check=False)
    assert result.returncode == code
    assert words in result.stderr and "exp.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_experiment_exits_3(sql_url: str) -> None:
    result = abkit("experiment", "show", "nope", url=sql_url, check=False)
    assert result.returncode == 3 and "'nope'" in result.stderr


def test_db_upgrade_creates_the_schema_and_is_repeatable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert "database at revision" in abkit("db", "upgrade", url=url).stdout
    assert "database at revision" in abkit("db", "upgrade", url=url).stdout
    assert abkit("experiment", "list", url=url).stdout.startswith("no experiments yet")


def test_unmigrated_store_says_what_to_do(tmp_path: Path) -> None:
    result = abkit("experiment", "list", url=f"sqlite:///{tmp_path / 'empty.db'}", check=False)
    assert result.returncode == 5 and "abkit db upgrade" in result.stderr


def test_grpc_server_serves_and_stops_gracefully_on_sigterm(sql_url: str, tmp_path: Path) -> None:
    everyone = EXAMPLE.read_text().replace("coverage: 0.05 ", "coverage: 1.0  ")
    abkit("experiment", "apply", "-f", write(tmp_path, everyone), "--start", url=sql_url)
    env = {**os.environ, "ABKIT_DATABASE_URL": sql_url, "ABKIT_WRITER_FLUSH_SECONDS": "5"}
    with subprocess.Popen(
        [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port = int(line.rsplit("port ", 1)[1].rstrip(")\n"))
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.AssignmentServiceStub(channel)
                attrs = {"platform": pb.AttributeValue(string_value="web")}
                for i in range(50):
                    request = pb.AssignRequest(unit_id=f"u{i}", attributes=attrs)
                    stub.Assign(request, timeout=5, wait_for_ready=True)
                stub.Track(pb.TrackRequest(unit_id="u1", metric="conversion"), timeout=5)
            # The writer holds everything for up to 5 s; SIGTERM must flush it, not lose it.
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    from abkit.store.sql import SqlStore

    store = SqlStore.from_url(sql_url)
    with store.transaction() as tx:
        assert sum(tx.exposures.counts("ranker-v2").values()) == 50
        assert tx.events.count() == 1
    store.close()


def test_the_three_demo_scenarios_end_as_stated(tmp_path: Path) -> None:
    expected = {
        "promote": "PROMOTE candidate",
        "harmful": "ROLLBACK control",
        "aa": "STOP_INCONCLUSIVE control",
    }
    procs = {}
    for scenario in expected:  # in parallel: the aa scenario waits out its 30 s maximum duration
        url = f"sqlite:///{tmp_path / scenario}.db"
        procs[scenario] = subprocess.Popen(
            [sys.executable, "-m", "abkit", "demo", "--scenario", scenario, "--database-url", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
    outputs = {}
    try:
        for scenario, proc in procs.items():
            out, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, f"{scenario}: {out}\n{err}"
            assert "decision after" in out and expected[scenario] in out, out
            assert "look  1" in out and "audit trail:" in out
            outputs[scenario] = out
    finally:  # a failed scenario must not leave the others running into the next test
        for proc in procs.values():
            proc.kill()
            proc.communicate()
    assert "guardrail latency_ms is harmed" in outputs["harmful"]
    assert "conversion improved in candidate" in outputs["promote"]


def test_history_and_manual_controls(sql_url: str) -> None:
    abkit("experiment", "apply", "-f", str(EXAMPLE), "--start", url=sql_url)
    out = abkit(
        "experiment", "promote", "ranker-v2", "candidate", "--reason", "QA sign-off", url=sql_url
    )
    assert "promoted candidate (QA sign-off)" in out.stdout
    again = abkit("experiment", "promote", "ranker-v2", "candidate", url=sql_url, check=False)
    assert again.returncode == 4 and "already rolled out" in again.stderr
    assert (
        "rolled back to control" in abkit("experiment", "rollback", "ranker-v2", url=sql_url).stdout
    )
    history = abkit("experiment", "history", "ranker-v2", url=sql_url).stdout.splitlines()
    assert [line.split()[3] for line in history] == ["create+start", "promote", "rollback"]
    assert "by tester: QA sign-off" in history[1]
    unknown = abkit("experiment", "promote", "ranker-v2", "nope", url=sql_url, check=False)
    assert unknown.returncode == 2 and "'nope' is not one of" in unknown.stderr


def test_two_worker_processes_on_postgresql_promote_once(pg_url: str, tmp_path: Path) -> None:
    from abkit.store.sql import SqlStore
    from tests.helpers import traffic

    text = EXAMPLE.read_text().split("policy:")[0] + (
        "policy:\n"
        "  primary: {metric: conversion, kind: binary, minimum_effect: 0.01}\n"
        "  min_units_per_arm: 100\n"
        "  look_interval: 1s\n"
    )
    abkit("experiment", "apply", "-f", write(tmp_path, text), "--start", url=pg_url)
    store = SqlStore.from_url(pg_url)
    traffic(store, units=8000, lift=0.1, seed=11)
    env = {**os.environ, "ABKIT_DATABASE_URL": pg_url, "ABKIT_WORKER_TICK_SECONDS": "0.1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "abkit", "worker"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                if tx.experiments.get("ranker-v2").experiment.status.value == "concluded":
                    break
            time.sleep(0.2)
        time.sleep(1.5)  # let both workers take a few more ticks
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=30) == 0
    with store.transaction() as tx:
        history = tx.decisions.list("ranker-v2")
        live = [v.version for v in tx.models.versions("ranker") if v.status == "live"]
    store.close()
    assert [d.action for d in history].count("promote") == 1
    looks = [d.look for d in history if d.look is not None]
    assert looks == sorted(set(looks))  # no look recorded twice
    assert live == ["ranker-v2"]


def test_forget_and_prune_from_the_command_line(sql_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from abkit.core.model import Event, Exposure
    from abkit.store.sql import SqlStore

    abkit("experiment", "apply", "-f", str(EXAMPLE), url=sql_url)
    now = datetime.now(UTC)
    store = SqlStore.from_url(sql_url)
    with store.transaction() as tx:
        tx.exposures.add([Exposure("ranker-v2", "alice", "control", "ranker-v1", "c" * 16, now)])
        tx.events.add(
            [
                Event("a1", "alice", "conversion", 1.0, now),
                Event("old", "bob", "conversion", 1.0, now - timedelta(days=400)),
            ]
        )
    out = abkit("forget", "alice", url=sql_url).stdout
    assert "erased 1 exposures and 1 events" in out
    assert (
        "erased 0 exposures and 1 events"
        in abkit("prune", "--older-than", "180d", url=sql_url).stdout
    )
    bad = abkit("prune", "--older-than", "soon", url=sql_url, check=False)
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    with store.transaction() as tx:
        assert [a.action for a in tx.audit.list()] == ["forget", "prune"]
        assert tx.events.count() == 0
    store.close()


def test_health_probes(sql_url: str, tmp_path: Path) -> None:
    assert abkit("health", "store", url=sql_url).returncode == 0
    unmigrated = abkit("health", "store", url=f"sqlite:///{tmp_path / 'new.db'}", check=False)
    assert unmigrated.returncode == 1
    dead = abkit("health", "grpc", "127.0.0.1:1", url=sql_url, check=False)
    assert dead.returncode == 1 and "unhealthy" in dead.stderr
    http = abkit("health", "http", "http://127.0.0.1:1/readyz", url=sql_url, check=False)
    assert http.returncode == 1


def test_loadtest_reports_abkit_against_the_empty_baseline(sql_url: str, tmp_path: Path) -> None:
    everyone = EXAMPLE.read_text().replace("coverage: 0.05 ", "coverage: 1.0  ")
    abkit("experiment", "apply", "-f", write(tmp_path, everyone), "--start", url=sql_url)
    env = {**os.environ, "ABKIT_DATABASE_URL": sql_url, "ABKIT_SPOOL_DIR": str(tmp_path / "spool")}
    with subprocess.Popen(
        [sys.executable, "-m", "abkit", "grpc", "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as server:  # fmt: skip
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline().rsplit("port ", 1)[1].rstrip(")\n"))
            report = tmp_path / "load.json"
            out = abkit(
                "loadtest", f"127.0.0.1:{port}", "--requests", "300", "--concurrency", "8",
                "--baseline", "--json", str(report), url=sql_url,
            ).stdout  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=30)
    assert "req/s" in out and "p99" in out and "abkit / baseline throughput" in out
    results = json.loads(report.read_text())
    assert [r["requests"] for r in results] == [300, 300]
    assert all(r["errors"] == 0 and r["p999_ms"] >= r["p50_ms"] > 0 for r in results)


def test_errors_speak_the_command_line_s_words(sql_url: str, tmp_path: Path) -> None:
    """Inner layers name the problem; the CLI names the flag or command that fixes it."""
    from datetime import UTC, datetime, timedelta

    from abkit.store.sql import SqlStore

    abkit("experiment", "apply", "-f", str(EXAMPLE), "--start", url=sql_url)
    store = SqlStore.from_url(sql_url)
    with store.engine.begin() as conn:  # started long ago: pruning would change its analysis
        started = (datetime.now(UTC) - timedelta(days=400)).isoformat()
        conn.exec_driver_sql(f"UPDATE experiments SET started_at = '{started}'")
    store.close()
    running = abkit("prune", "--older-than", "180d", url=sql_url, check=False)
    assert running.returncode == 4 and "pass --include-running" in running.stderr
    missing = abkit("experiment", "show", "nope", url=sql_url, check=False)
    assert missing.returncode == 3
    assert "does not exist; `abkit experiment list` shows the experiments" in missing.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    unmigrated = abkit("experiment", "list", url=empty, check=False)
    assert unmigrated.returncode == 5 and "migrate it" in unmigrated.stderr
    assert unmigrated.stderr.rstrip().endswith("run `abkit db upgrade`")


def test_results_recompute_agrees_and_exits_6_when_the_state_is_wrong(sql_url: str) -> None:
    from abkit.store.sql import SqlStore
    from tests.helpers import traffic

    abkit("experiment", "apply", "-f", str(EXAMPLE), "--start", url=sql_url)
    store = SqlStore.from_url(sql_url)
    traffic(store, units=300, lift=0.05, seed=3)
    first = abkit("results", "ranker-v2", "--recompute", url=sql_url)
    assert "maintained statistics equal the full recomputation" in first.stdout
    traffic(store, units=200, lift=0.05, seed=4, start=300)  # a second, incremental look
    doc = json.loads(
        abkit("results", "ranker-v2", "--recompute", "--format", "json", url=sql_url).stdout
    )
    assert doc["ok"] and doc["differences"] == []
    n = [r for r in doc["rows"] if r["field"] == "n"]
    assert sum(r["maintained"] for r in n) == 2 * 500  # two metrics, 500 units each
    assert all(r["maintained"] == r["recomputed"] for r in doc["rows"] if r["field"] == "n")
    with store.engine.begin() as conn:  # a state that drifted (a bug, a row written by hand)
        conn.exec_driver_sql("UPDATE analysis_days SET s = s + 1")
    store.close()
    wrong = abkit("results", "ranker-v2", "--recompute", url=sql_url, check=False)
    assert wrong.returncode == 6, wrong.stderr
    assert "DIFFERS" in wrong.stdout and "differ from the full recomputation" in wrong.stderr
