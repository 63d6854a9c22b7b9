"""The local journal and its drain: durable before acknowledged, in order, bounded, recoverable."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from abkit.core.model import Event, Exposure
from abkit.core.rows import RowKind, encode_events, encode_exposures
from abkit.errors import StoreUnavailableError
from abkit.infra.drain import JournalDrain
from abkit.infra.journal import (
    HEADER_SIZE,
    MERGE_BYTES,
    START,
    Journal,
    JournalFailed,
    JournalFull,
    JournalInUse,
    Position,
    frame,
)
from abkit.infra.stream import MAX_MESSAGE_BYTES
from abkit.store.memory import MemoryStore

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def exposures(n: int, start: int = 0, arm: str = "control") -> list[Exposure]:
    return [
        Exposure("exp", f"u{i}", arm, "v1", "c" * 16, T0 + timedelta(seconds=i))
        for i in range(start, start + n)
    ]


def append_exposures(journal: Journal, rows: list[Exposure]) -> Any:
    return journal.append(RowKind.EXPOSURES, encode_exposures(rows).encode(), len(rows))


@pytest.fixture(params=["disk", "memory"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    j = Journal(tmp_path / "journal" if request.param == "disk" else None)
    j.open()
    yield j
    j.close()
    j.release()


def test_an_append_is_durable_when_its_receipt_says_so(journal: Journal) -> None:
    receipt = append_exposures(journal, exposures(3))
    assert receipt.wait(5)
    records = journal.read(START, max_rows=100, timeout=1)
    assert [(r.kind, r.rows) for r in records] == [(RowKind.EXPOSURES, 3)]
    assert journal.stats().durable_rows == 3 and journal.stats().backlog_rows == 3


def test_an_append_nobody_waits_for_is_made_durable_by_the_flusher(journal: Journal) -> None:
    # Asynchronous exposures: nobody hurries the group; the flusher must still sync it, also
    # after idling (when it sleeps without a deadline until an append wakes it).
    for round_ in range(3):
        time.sleep(0.05)
        append_exposures(journal, exposures(2, start=2 * round_))
        deadline = time.monotonic() + 2
        while journal.stats().durable_rows < 2 * (round_ + 1) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert journal.stats().durable_rows == 2 * (round_ + 1)


def test_an_idle_flusher_does_not_wake(journal: Journal) -> None:
    # It used to wake every FLUSH_INTERVAL (5 ms) with nothing to do, each time taking the GIL
    # from the server's request loop.
    receipt = append_exposures(journal, exposures(1))
    assert receipt.wait(5)
    flusher = journal._thread
    assert flusher is not None and flusher.native_id is not None
    status = Path(f"/proc/self/task/{flusher.native_id}/status")

    def switches() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("voluntary"))
        return int(line.split()[1])

    time.sleep(0.05)  # let it finish the group and go back to waiting
    before = switches()
    time.sleep(0.3)
    assert switches() - before <= 5  # 60 at one wake-up per 5 ms


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    barrier = threading.Barrier(16)
    receipts: list[Any] = []

    def caller(k: int) -> None:
        barrier.wait()
        for i in range(25):
            receipt = append_exposures(journal, exposures(1, start=k * 100 + i))
            assert receipt.wait(5)
            receipts.append(receipt)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = journal.stats()
    assert len(receipts) == 400 and stats.durable_rows == 400
    assert stats.syncs < 400  # group commit: fewer fsyncs than calls
    journal.close()
    journal.release()


def test_records_read_back_in_order_and_consumption_deletes_segments(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=2_000)
    journal.open()
    for k in range(20):  # each record ~700 bytes: several segments
        assert append_exposures(journal, exposures(10, start=10 * k)).wait(5)
    segments = sorted(p.name for p in (tmp_path / "j").glob("*.journal"))
    assert len(segments) > 3
    position, seen = START, []
    while records := journal.read(position, max_rows=25, timeout=0.1):
        assert sum(r.rows for r in records) <= 25 or len(records) == 1
        seen += [r.payload for r in records]
        position = records[-1].end
        journal.consumed(position, sum(r.rows for r in records))
    assert seen == [encode_exposures(exposures(10, start=10 * k)).encode() for k in range(20)]
    left = sorted(p.name for p in (tmp_path / "j").glob("*.journal"))
    assert len(left) == 1 and journal.stats().backlog_rows == 0
    assert journal.stats().backlog_bytes == 0
    journal.close()
    journal.release()


def test_a_reopened_journal_replays_from_its_checkpoint(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    for k in range(3):
        assert append_exposures(journal, exposures(5, start=5 * k)).wait(5)
    first = journal.read(START, max_rows=5, timeout=1)
    journal.consumed(first[-1].end, 5)
    journal.close()
    journal.release()
    again = Journal(tmp_path / "j")
    again.open()
    assert again.checkpoint == first[-1].end and again.stats().backlog_rows == 10
    replay = again.read(again.checkpoint, max_rows=100, timeout=1)
    assert [r.payload for r in replay] == [
        encode_exposures(exposures(5, start=5 * k)).encode() for k in (1, 2)
    ]
    assert append_exposures(again, exposures(1, start=99)).wait(5)  # appends after the old ones
    assert len(again.read(again.checkpoint, max_rows=100, timeout=1)) == 3
    again.close()
    again.release()


def test_a_torn_tail_was_never_durable_and_is_truncated(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    assert append_exposures(journal, exposures(2)).wait(5)
    journal.close()
    journal.release()
    segment = next((tmp_path / "j").glob("*.journal"))
    whole = segment.stat().st_size
    torn = frame(RowKind.EVENTS, 1, b"a crash in the middle of this write")
    with open(segment, "ab") as handle:
        handle.write(torn[: HEADER_SIZE + 5])
    reopened = Journal(tmp_path / "j")
    reopened.open()
    assert segment.stat().st_size == whole
    assert [r.rows for r in reopened.read(START, max_rows=100, timeout=1)] == [2]
    assert append_exposures(reopened, exposures(1, start=7)).wait(5)
    assert [r.rows for r in reopened.read(START, max_rows=100, timeout=1)] == [2, 1]
    reopened.close()
    reopened.release()


def test_a_corrupt_record_stops_the_read_at_the_last_good_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    for k in range(3):
        assert append_exposures(journal, exposures(1, start=k)).wait(5)
    journal.close()
    journal.release()
    segment = next((tmp_path / "j").glob("*.journal"))
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # the last record's payload no longer matches its checksum
    segment.write_bytes(bytes(data))
    reopened = Journal(tmp_path / "j")
    reopened.open()
    assert [r.rows for r in reopened.read(START, max_rows=100, timeout=1)] == [1, 1]
    reopened.close()
    reopened.release()


def test_the_bound_refuses_rather_than_loses(journal: Journal, tmp_path: Path) -> None:
    small = Journal(None if journal.directory is None else tmp_path / "small", max_bytes=3_000)
    small.open()
    accepted = 0
    with pytest.raises(JournalFull, match="retry shortly"):
        for k in range(100):
            assert append_exposures(small, exposures(5, start=5 * k)).wait(5)
            accepted += 5
    assert accepted > 0 and small.stats().durable_rows == accepted
    records = small.read(START, max_rows=10_000, timeout=1)
    small.consumed(records[-1].end, accepted)  # the store caught up: room again
    assert append_exposures(small, exposures(5, start=1000)).wait(5)
    small.close()
    small.release()


def test_one_process_per_journal(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j")
    first.open()
    with pytest.raises(JournalInUse, match="another abkit process"):
        Journal(tmp_path / "j").open()
    first.close()
    first.release()


def test_a_failed_fsync_refuses_everything_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    assert append_exposures(journal, exposures(1)).wait(5)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    receipt = append_exposures(journal, exposures(1, start=1))
    assert receipt.wait(5) is False  # never told it was recorded
    assert journal.failed
    with pytest.raises(JournalFailed, match="Input/output error"):
        append_exposures(journal, exposures(1, start=2))
    journal.close()
    journal.release()


# -- the drain -------------------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """The memory store; refuses a given event id as bad data and can be marked unavailable."""

    def __init__(self, refuse: str = "") -> None:
        super().__init__()
        self.refuse = refuse

    def transaction(self) -> Any:
        context = super().transaction()
        refuse = self.refuse

        class Wrapped:
            def __enter__(self) -> Any:
                tx = context.__enter__()
                add_text = tx.events.add_text

                def checked(text: str, rows: int) -> int:
                    if refuse and refuse in text:
                        raise ValueError(f"value out of range in {refuse}")
                    return int(add_text(text, rows))

                tx.events.add_text = checked
                return tx

            def __exit__(self, *exc: object) -> Any:
                return context.__exit__(*exc)  # type: ignore[arg-type]

        return Wrapped()


def test_the_drain_copies_every_durable_row_once(journal: Journal) -> None:
    store = MemoryStore()
    drain = JournalDrain(journal, store, batch_rows=7, interval=0.01)
    rows = exposures(30)
    for k in range(0, 30, 3):
        assert append_exposures(journal, rows[k : k + 3]).wait(5)
    events = [Event(f"e{i}", f"u{i}", "conversion", 1.0, T0) for i in range(5)]
    assert journal.append(RowKind.EVENTS, encode_events(events).encode(), 5).wait(5)
    drain.start()
    assert journal.wait_consumed(journal.durable_end, 5)
    drain.stop(5)
    with store.transaction() as tx:
        assert [tx.exposures.get("exp", r.unit_id) for r in rows] == rows
        assert [tx.events.get(e.event_id) for e in events] == events
    assert drain.stats().written == {"exposures": 30, "events": 5}


def test_the_drain_waits_out_a_store_outage(journal: Journal) -> None:
    store = MemoryStore()
    store.available = False
    drain = JournalDrain(journal, store, interval=0.01, max_backoff=0.05)
    drain.start()
    assert append_exposures(journal, exposures(4)).wait(5)
    assert not journal.wait_consumed(journal.durable_end, 0.3)  # kept: the store is away
    assert drain.degraded and journal.stats().backlog_rows == 4
    store.available = True
    assert journal.wait_consumed(journal.durable_end, 5)
    assert not drain.degraded
    drain.stop(5)
    with store.transaction() as tx:
        assert tx.exposures.counts("exp") == {"control": 4}


def test_a_refused_record_is_dead_lettered_not_blocking(journal: Journal) -> None:
    store = FlakyStore(refuse="poison")
    drain = JournalDrain(journal, store, interval=0.01)
    good = [Event("ok-1", "u1", "conversion", 1.0, T0)]
    bad = [Event("poison", "u2", "conversion", 1.0, T0)]
    later = [Event("ok-2", "u3", "conversion", 1.0, T0)]
    for batch in (good, bad, later):
        assert journal.append(RowKind.EVENTS, encode_events(batch).encode(), 1).wait(5)
    drain.start()
    assert journal.wait_consumed(journal.durable_end, 5)
    drain.stop(5)
    with store.transaction() as tx:
        assert tx.events.get("ok-1") is not None and tx.events.get("ok-2") is not None
        assert tx.events.get("poison") is None
    assert drain.stats().dead_lettered == 1
    if journal.directory is not None:
        dead = journal.directory / "dead-letter"
        (reason,) = dead.glob("*.reason")
        assert "value out of range in poison" in reason.read_text()
        (rows,) = dead.glob("*.rows")
        assert b"poison" in rows.read_bytes()


def test_a_store_refusing_everything_keeps_the_rows(journal: Journal) -> None:
    class Down(MemoryStore):
        def transaction(self) -> Any:
            raise StoreUnavailableError("the database is gone")

    drain = JournalDrain(journal, Down(), interval=0.01, max_backoff=0.02)
    assert append_exposures(journal, exposures(2)).wait(5)
    drain.start()
    assert not journal.wait_consumed(journal.durable_end, 0.2)
    drain.stop(0.1)
    assert journal.stats().backlog_rows == 2 and journal.checkpoint == Position(1, 0)


def test_a_refused_row_among_good_ones_is_dead_lettered_alone(journal: Journal) -> None:
    """A record holds the rows of many calls (a group commit's): one refused row must not take
    the others with it."""
    store = FlakyStore(refuse="poison")
    drain = JournalDrain(journal, store, interval=0.01)
    rows = [Event(f"ok-{i}", f"u{i}", "conversion", 1.0, T0) for i in range(5)]
    rows.insert(2, Event("poison", "u9", "conversion", 1.0, T0))
    assert journal.append(RowKind.EVENTS, encode_events(rows).encode(), len(rows)).wait(5)
    drain.start()
    assert journal.wait_consumed(journal.durable_end, 5)
    drain.stop(5)
    with store.transaction() as tx:
        assert all(tx.events.get(f"ok-{i}") is not None for i in range(5))
        assert tx.events.get("poison") is None
    assert drain.stats().dead_lettered == 1
    assert drain.stats().written["events"] == 5
    if journal.directory is not None:
        dead = journal.directory / "dead-letter"
        (stored,) = dead.glob("*.rows")
        assert stored.read_bytes() == encode_events([rows[2]]).encode()
        (reason,) = dead.glob("*.reason")
        assert reason.read_text() == "ValueError: value out of range in poison\n"


def test_appends_of_one_group_share_a_record(journal: Journal) -> None:
    """Consecutive appends of one kind in a group are one record (a consumer handles a group's
    rows as one piece); another kind in between starts a new one, so the order is kept."""
    receipts = [append_exposures(journal, exposures(1, start=i)) for i in range(50)]
    event = encode_events([Event("e-1", "u1", "conversion", 1.0, T0)]).encode()
    receipts.append(journal.append(RowKind.EVENTS, event, 1))
    receipts += [append_exposures(journal, exposures(1, start=i)) for i in range(50, 60)]
    assert all(r.wait(5) for r in receipts)
    records = journal.read(START, max_rows=1000, timeout=1)
    assert len(records) < len(receipts)
    assert sum(r.rows for r in records) == 61
    kinds = [r.kind for r in records]
    first_event = kinds.index(RowKind.EVENTS)
    assert set(kinds[:first_event]) == {RowKind.EXPOSURES} and kinds.count(RowKind.EVENTS) == 1
    exposure_text = b"".join(r.payload for r in records if r.kind is RowKind.EXPOSURES)
    assert exposure_text == encode_exposures(exposures(60)).encode()


def test_a_record_is_never_larger_than_a_stream_message() -> None:
    assert MERGE_BYTES <= MAX_MESSAGE_BYTES


def test_the_drain_does_not_pause_while_a_backlog_remains(journal: Journal) -> None:
    """Records are not split, so a batch may stop short of ``batch_rows`` with more to read:
    the drain goes on at once, and pauses ``interval`` only once it has caught up."""
    for k in range(10):
        assert append_exposures(journal, exposures(10, start=10 * k)).wait(5)
    store = MemoryStore()
    drain = JournalDrain(journal, store, batch_rows=25, interval=60.0)  # 20 rows a batch
    drain.start()
    assert journal.wait_consumed(journal.durable_end, 5)
    drain.stop(5)
    with store.transaction() as tx:
        assert sum(tx.exposures.counts("exp").values()) == 100


def test_rows_arriving_during_a_batch_wait_for_the_next_interval(journal: Journal) -> None:
    """Once caught up with what was durable when it read, the drain lets rows gather: under a
    steady trickle it must not write one small transaction per group commit."""
    arrivals: list[Any] = []

    class Busy(MemoryStore):
        def transaction(self) -> Any:
            if not arrivals:  # a row arrives while the first batch is written
                arrivals.append(append_exposures(journal, exposures(1, start=99)))
                assert arrivals[0].wait(5)
            return super().transaction()

    assert append_exposures(journal, exposures(1)).wait(5)
    first = journal.durable_end
    drain = JournalDrain(journal, Busy(), interval=60.0)
    drain.start()
    assert journal.wait_consumed(first, 5)
    assert arrivals and journal.durable_end > first
    assert not journal.wait_consumed(journal.durable_end, 0.5)
    drain.stop(0.1)
