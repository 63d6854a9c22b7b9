"""`abkit results`, `abkit web` (gunicorn and --dev) and the page inside `abkit serve`, run as a
user runs them: subprocesses on a real store and real ports."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import IO

import pytest

from abkit.services.decisions import DecisionService
from abkit.store.sql import SqlStore
from tests.helpers import T0, Clock, setup, traffic

KEY = "ranker-v2"


def abkit(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ABKIT_DATABASE_URL": url, "ABKIT_ACTOR": "tester"}
    return subprocess.run(
        [sys.executable, "-m", "abkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def decide(url: str) -> str:
    store = SqlStore.from_url(url)
    clock = Clock(T0 + timedelta(hours=2))
    setup(store, clock)
    traffic(store, units=3000, lift=0.06, seed=8)
    assert DecisionService(store, clock).look(KEY) is not None
    store.close()
    return url


@pytest.fixture
def decided(sql_url: str) -> str:
    """An experiment with one look, on SQLite and on PostgreSQL."""
    return decide(sql_url)


@pytest.fixture
def served(sqlite_url: str) -> str:
    """The same on SQLite only: the server tests are about processes, not about the store."""
    return decide(sqlite_url)


def test_results_command_prints_the_page_as_table_json_and_csv(decided: str) -> None:
    store = SqlStore.from_url(decided)
    with store.transaction() as tx:
        last = tx.decisions.last_look(KEY)
    store.close()
    assert last is not None
    primary = last.snapshot["comparisons"][0]

    table = abkit("results", KEY, url=decided)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "conversion (primary, binary)" in out and "latency_ms (guardrail, continuous)" in out
    assert f"{primary['n_treatment']:,}" in out and "ABS LIFT" in out
    assert "traffic split (SRM)" in out

    doc = json.loads(abkit("results", KEY, "--format", "json", url=decided).stdout)
    assert doc["key"] == KEY and doc["numbers_look"] == 1
    assert doc["comparisons"][0]["absolute"]["estimate"] == primary["estimate"]
    assert doc["comparisons"][0]["p_value"] == primary["p_value"]

    rows = list(
        csv.DictReader(io.StringIO(abkit("results", KEY, "--format", "csv", url=decided).stdout))
    )
    assert [r["metric"] for r in rows] == ["conversion", "latency_ms"]
    assert float(rows[0]["ci_low"]) == primary["ci_low"]

    missing = abkit("results", "nope", url=decided)
    assert missing.returncode == 3 and "does not exist" in missing.stderr


class Lines:
    """A subprocess's output lines, readable with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            self.lines.put(line)

    def close(self) -> None:
        """After the process ended: the pump reaches end of file, then the pipe is closed."""
        self._thread.join(timeout=10)
        self._stream.close()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in: {''.join(seen)}") from None
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


@contextmanager
def running(*args: str, url: str) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    env = {**os.environ, "ABKIT_DATABASE_URL": url, "ABKIT_ACTOR": "tester"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "abkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        out.close()
        err.close()


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # a local test server
        return response.status, response.read().decode()


def test_web_dev_server_serves_and_stops_on_sigterm(served: str) -> None:
    with running("web", "--dev", "--address", "127.0.0.1:0", url=served) as (proc, out, _):
        base = out.wait_for(r"results page at (http://\S+)").group(1)
        assert get(f"{base}/healthz") == (200, '{"status":"ok"}\n')
        status, body = get(f"{base}/experiments/{KEY}")
        assert status == 200 and "<svg" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_web_runs_gunicorn_workers(served: str) -> None:
    with running("web", "--address", "127.0.0.1:0", "--workers", "2", url=served) as (
        proc,
        _,
        err,
    ):
        base = err.wait_for(r"Listening at: (http://\S+)").group(1)
        err.wait_for(r"Booting worker")
        status, body = get(f"{base}/api/experiments")
        assert status == 200 and json.loads(body)["experiments"][0]["key"] == KEY
        assert get(f"{base}/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_serve_runs_the_results_page_next_to_grpc_and_the_worker(served: str) -> None:
    args = ("serve", "--address", "127.0.0.1:0", "--web-address", "127.0.0.1:0")
    with running(*args, url=served) as (proc, out, _):
        base = out.wait_for(r"results page at (http://\S+)").group(1)
        assert get(f"{base}/readyz")[0] == 200
        status, body = get(f"{base}/experiments/{KEY}")
        assert status == 200 and "conversion" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_busy_or_malformed_web_address_exits_2(served: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (
            ("web", "--dev", "--address", f"127.0.0.1:{port}"),
            ("serve", "--address", "127.0.0.1:0", "--web-address", f"127.0.0.1:{port}"),
        ):
            result = abkit(*args, url=served)
            assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
    malformed = abkit("web", "--address", "nonsense", url=served)
    assert malformed.returncode == 2 and "host:port" in malformed.stderr


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_abkit_results_never_imports_the_web_framework(decided: str, fmt: str) -> None:
    """The report is not web code: rendering it loads neither Flask nor Werkzeug."""
    script = (
        "import sys\n"
        "from abkit.cli import main\n"
        "try:\n"
        f"    main(['--database-url', {decided!r}, 'results', {KEY!r}, '--format', {fmt!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug'))\n"
        "print('WEB MODULES:', ','.join(web), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert KEY in done.stdout and "abkit.web" not in done.stderr
    assert done.stderr.strip().endswith("WEB MODULES:")
