"""``abkit wait`` as a pipeline runs it: a subprocess on a real store, while a decision service
in the test records real looks; every documented exit code, for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from abkit.cli.base import ExitCode
from abkit.cli.wait import Limits, Outcome, Output, watch
from abkit.errors import StoreUnavailableError
from abkit.ports import Store
from abkit.services.experiments import ExperimentService
from abkit.store.memory import MemoryStore
from abkit.store.sql import SqlStore
from tests.cli_support import EXPERIMENT_KEY, abkit, cli_env, demo_experiment


@contextmanager
def waiting(url: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``abkit wait`` running in the background; entered once it has read the experiment (its
    first line is out), so every look recorded in the block is a new look."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "abkit", "wait", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(url),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = _first_line(proc.stdout.fileno())
        assert first, f"abkit wait ended early: {proc.communicate(timeout=30)}"
        proc.first_line = first  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _first_line(fd: int) -> str:
    """The first line, read a byte at a time from the pipe itself: a buffered ``readline`` may
    take the next lines too (the result, when it follows at once), and ``communicate`` reads the
    pipe, not that buffer, so they would be lost."""
    line = bytearray()
    while not line.endswith(b"\n") and (byte := os.read(fd, 1)):
        line += byte
    return line.decode()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, list[str], str]:
    out, err = proc.communicate(timeout=timeout)
    lines = [proc.first_line, *out.splitlines()]  # type: ignore[attr-defined]
    return proc.returncode, [line.rstrip("\n") for line in lines], err


@pytest.fixture
def store(sql_url: str) -> Iterator[SqlStore]:
    sql = SqlStore.from_url(sql_url)
    yield sql
    sql.close()


@pytest.mark.parametrize(
    ("scenario", "code", "outcome", "arm", "version"),
    [
        ("promote", ExitCode.OK, "promoted", "candidate", "ranker-v2"),
        ("harmful", ExitCode.ROLLED_BACK, "rolled_back", "control", "ranker-v1"),
        ("aa", ExitCode.STOPPED_INCONCLUSIVE, "stopped_inconclusive", "control", "ranker-v1"),
    ],
)
def test_the_demo_scenarios_end_the_wait_with_their_exit_codes(
    sql_url: str,
    store: SqlStore,
    scenario: str,
    code: ExitCode,
    outcome: str,
    arm: str,
    version: str,
) -> None:
    demo = demo_experiment(store, scenario)
    args = (EXPERIMENT_KEY, "--json", "--poll-interval", "0.1", "--timeout", "2m")
    with waiting(sql_url, *args) as proc:
        assert json.loads(proc.first_line) == {  # type: ignore[attr-defined]
            "event": "waiting", "experiment": EXPERIMENT_KEY, "status": "running", "looks": 0,
        }  # fmt: skip
        looks = demo.run_to_decision()
        returncode, lines, err = finish(proc)
    assert returncode == code, err
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    printed = [d for d in docs if d["event"] == "look"]
    # One line per look, each once, in order, with the decision and its numbers.
    assert [d["look"] for d in printed] == [o.record.look for o in looks]
    assert [d["action"] for d in printed] == [o.record.action for o in looks]
    assert set(printed[0]["units"]) == {"control", "candidate"}
    assert {c["metric"] for c in printed[0]["comparisons"]} == {"conversion", "latency_ms"}
    result = docs[-1]
    assert result["event"] == "result" and result["outcome"] == outcome
    assert result["exit_code"] == code and result["look"] == looks[-1].record.look
    assert (result["arm"], result["model_version"]) == (arm, version)
    assert result["status"] == "concluded" and result["message"].startswith(EXPERIMENT_KEY)


def test_text_output_is_a_line_per_look_then_the_verdict(sql_url: str, store: SqlStore) -> None:
    demo = demo_experiment(store, "promote")
    with waiting(sql_url, EXPERIMENT_KEY, "--poll-interval", "0.1") as proc:
        assert proc.first_line.startswith(  # type: ignore[attr-defined]
            f"waiting for {EXPERIMENT_KEY}: running, 0 look(s) so far"
        )
        looks = demo.run_to_decision()
        returncode, lines, err = finish(proc)
    assert returncode == 0, err
    look_lines = [line for line in lines if line.startswith("look ")]
    assert len(look_lines) == len(looks) >= 2
    assert "units control=1,000 candidate=1,000" in look_lines[0]
    assert "conversion +" in look_lines[0] and "-> continue: " in look_lines[0]
    assert look_lines[-1].startswith(f"look {len(looks):>3}")
    assert "-> promote candidate: " in look_lines[-1]
    assert "conversion improved in candidate" in look_lines[-1]
    assert lines[-1].startswith(
        f"promoted (exit 0): {EXPERIMENT_KEY}: promoted candidate (ranker-v2) at look {len(looks)}"
    )


def test_a_decided_experiment_returns_at_once_with_its_code(sql_url: str, store: SqlStore) -> None:
    demo = demo_experiment(store, "promote")
    demo.decisions.promote(EXPERIMENT_KEY, "candidate", actor="alice", reason="QA sign-off")
    started = time.monotonic()
    promoted = abkit("wait", EXPERIMENT_KEY, "--json", url=sql_url, check=False)
    assert promoted.returncode == ExitCode.OK, promoted.stderr
    result = json.loads(promoted.stdout.splitlines()[-1])
    assert result["outcome"] == "promoted" and result["waited_seconds"] < 5
    assert "by alice: QA sign-off" in result["message"]
    # A person undoes the promotion: the experiment now stands rolled back.
    demo.decisions.rollback(EXPERIMENT_KEY, actor="bob", reason="complaints")
    rolled_back = abkit("wait", EXPERIMENT_KEY, url=sql_url, check=False)
    assert rolled_back.returncode == ExitCode.ROLLED_BACK == 10
    assert "rolled back to control (ranker-v1) by bob: complaints" in rolled_back.stdout
    assert time.monotonic() - started < 60


def test_paused_for_longer_than_max_hold_exits_12(sql_url: str, store: SqlStore) -> None:
    demo = demo_experiment(store, "promote")
    demo.experiments.pause(EXPERIMENT_KEY, actor="alice")
    args = (EXPERIMENT_KEY, "--max-hold", "1s", "--poll-interval", "0.1", "--json")
    with waiting(sql_url, *args) as proc:
        returncode, lines, err = finish(proc)
    assert returncode == ExitCode.HELD_TOO_LONG == 12, err
    result = json.loads(lines[-1])
    assert result["outcome"] == "paused_too_long" and result["status"] == "paused"
    assert "paused by alice" in result["message"]
    assert f"abkit experiment resume {EXPERIMENT_KEY}" in result["message"]


def test_looks_that_hold_for_longer_than_max_hold_exit_12(sql_url: str, store: SqlStore) -> None:
    demo = demo_experiment(store, "promote")
    with store.engine.begin() as conn:  # a policy this abkit cannot read: every look holds
        conn.exec_driver_sql(
            'UPDATE experiments SET policy = \'{"primary": {"metric": 42}}\' WHERE key = ?'
            if store.engine.dialect.name == "sqlite"
            else 'UPDATE experiments SET policy = \'{"primary": {"metric": 42}}\' WHERE key = %s',
            (EXPERIMENT_KEY,),
        )
    args = (EXPERIMENT_KEY, "--max-hold", "2s", "--poll-interval", "0.1")
    with waiting(sql_url, *args) as proc:
        demo.clock.value = datetime.now(UTC)  # the holds start now, not when wait started
        first = demo.look()
        second = demo.look()
        returncode, lines, err = finish(proc)
    assert first.record.action == second.record.action == "hold"
    assert returncode == ExitCode.HELD_TOO_LONG, err
    holds = [line for line in lines if line.startswith("look ")]
    assert len(holds) == 2 and all("-> hold: holding, nothing changes" in h for h in holds)
    assert lines[-1].startswith("held_too_long (exit 12): every look of demo-ranker has held")
    assert "2 look(s) since look 1" in lines[-1] and second.record.reason in lines[-1]


def test_no_decision_before_the_timeout_exits_13(sql_url: str, store: SqlStore) -> None:
    demo_experiment(store, "promote")
    started = time.monotonic()
    result = abkit(
        "wait", EXPERIMENT_KEY, "--timeout", "1s", "--poll-interval", "0.2", "--json",
        url=sql_url, check=False,
    )  # fmt: skip
    assert result.returncode == ExitCode.TIMED_OUT == 13, result.stderr
    assert time.monotonic() - started >= 1
    doc = json.loads(result.stdout.splitlines()[-1])
    assert doc["outcome"] == "timed_out" and doc["status"] == "running"
    assert "is still running after 1 s" in doc["message"]


def test_an_unknown_experiment_exits_3(sql_url: str) -> None:
    result = abkit("wait", "nope", "--json", url=sql_url, check=False)
    assert result.returncode == ExitCode.NOT_FOUND == 3
    assert json.loads(result.stdout) == {
        "event": "result", "experiment": "nope", "outcome": "not_found", "exit_code": 3,
        "message": "experiment 'nope' does not exist",
    }  # fmt: skip
    assert "`abkit experiment list` shows the experiments" in result.stderr


def test_an_unreachable_or_unmigrated_store_exits_5(tmp_path: Path) -> None:
    nowhere = f"sqlite:///{tmp_path / 'no-such-dir' / 'abkit.db'}"
    unreachable = abkit("wait", "ranker-v2", "--json", url=nowhere, check=False)
    assert unreachable.returncode == ExitCode.STORE_UNREACHABLE == 5, unreachable.stderr
    assert json.loads(unreachable.stdout)["outcome"] == "store_unreachable"
    assert "the store is unreachable" in unreachable.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    unmigrated = abkit("wait", "ranker-v2", url=empty, check=False)
    assert unmigrated.returncode == 5 and "run `abkit db upgrade`" in unmigrated.stderr


@pytest.mark.parametrize("option", ["--timeout", "--max-hold"])
def test_a_bad_duration_exits_2_naming_the_option(sqlite_url: str, option: str) -> None:
    result = abkit("wait", "ranker-v2", option, "soon", url=sqlite_url, check=False)
    assert result.returncode == ExitCode.INVALID_INPUT == 2
    assert f"error: {option}: must be a duration such as 7d, 24h or 90m" in result.stderr


class FlakyStore:
    """A store that answers like an unreachable database while ``down`` (or after ``reads``
    transactions): what ``wait`` must ride out, or give up on at its timeout."""

    def __init__(self, inner: MemoryStore, reads: int | None = None) -> None:
        self.inner = inner
        self.down = False
        self.reads = reads

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.reads is not None:
            self.reads -= 1
        if self.down or (self.reads is not None and self.reads < 0):
            raise StoreUnavailableError("the store is unreachable: connection refused")
        with self.inner.transaction() as tx:
            yield tx

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


def test_an_outage_while_waiting_is_ridden_out(capsys: pytest.CaptureFixture[str]) -> None:
    inner = MemoryStore()
    demo = demo_experiment(inner, "promote")
    flaky = FlakyStore(inner)

    def outage_then_promotion() -> None:
        time.sleep(0.2)
        flaky.down = True
        time.sleep(0.3)
        demo.decisions.promote(EXPERIMENT_KEY, "candidate", actor="alice")
        time.sleep(0.3)
        flaky.down = False

    helper = threading.Thread(target=outage_then_promotion)
    helper.start()
    service = ExperimentService(cast(Store, flaky), demo.clock)
    out = Output(EXPERIMENT_KEY, as_json=False)
    verdict, record = watch(service, demo.clock, EXPERIMENT_KEY, out, Limits(30.0, None, 0.05))
    helper.join()
    assert verdict.outcome is Outcome.PROMOTED and verdict.outcome.exit_code == 0
    assert record is not None and record.experiment.rollout_arm == "candidate"
    captured = capsys.readouterr()
    assert captured.err.count("the store is unreachable, retrying every 0.05 s") == 1
    assert "promote candidate by alice" in captured.out  # the manual action, printed once


def test_an_outage_still_on_at_the_timeout_is_store_unreachable() -> None:
    inner = MemoryStore()
    demo = demo_experiment(inner, "promote")
    service = ExperimentService(cast(Store, FlakyStore(inner, reads=1)), demo.clock)
    out = Output(EXPERIMENT_KEY, as_json=True)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="connection refused"):
        watch(service, demo.clock, EXPERIMENT_KEY, out, Limits(0.5, None, 0.05))
    assert 0.5 <= time.monotonic() - started < 5
