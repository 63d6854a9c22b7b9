"""The background writer: batches, never blocks the caller, retries, flushes on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from abkit.errors import StoreUnavailableError
from abkit.infra.spool import Spool
from abkit.infra.writer import BufferedWriter


class RecordingSink:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.seen: set[int] = set()
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: Sequence[int]) -> int:
        self.gate.wait()
        if self.fail:
            raise StoreUnavailableError("down")
        self.batches.append(list(batch))
        new = [x for x in batch if x not in self.seen]
        self.seen.update(batch)
        return len(new)


def test_writes_everything_in_order_in_bounded_batches() -> None:
    sink = RecordingSink()
    writer = BufferedWriter("t", sink, batch_size=100, flush_interval=0.01, queue_size=10_000)
    writer.start()
    for start in range(0, 1000, 7):
        assert writer.submit(list(range(start, min(start + 7, 1000))))
    assert writer.flush(5)
    assert [x for b in sink.batches for x in b] == list(range(1000))
    assert max(len(b) for b in sink.batches) <= 100
    assert writer.close(5)
    stats = writer.stats()
    assert (stats.accepted, stats.written, stats.dropped, stats.queued) == (1000, 1000, 0, 0)


def test_submit_never_waits_for_the_sink() -> None:
    sink = RecordingSink()
    sink.gate.clear()  # the database hangs
    writer = BufferedWriter("t", sink, batch_size=10, flush_interval=0.01, queue_size=1000)
    writer.start()
    started = time.perf_counter()
    for i in range(500):
        writer.submit([i])
    assert time.perf_counter() - started < 0.5
    sink.gate.set()
    assert writer.close(5)
    assert sorted(sink.seen) == list(range(500))


def test_full_queue_refuses_whole_batches_and_counts_them() -> None:
    sink = RecordingSink()
    sink.gate.clear()
    writer = BufferedWriter("t", sink, batch_size=5, flush_interval=0.01, queue_size=20)
    assert writer.submit(list(range(15)))
    assert not writer.submit(list(range(15, 30)))  # would exceed 20: refused as a whole
    assert writer.submit(list(range(30, 35)))
    assert writer.stats().dropped == 15
    writer.start()
    sink.gate.set()
    assert writer.close(5)
    assert sorted(sink.seen) == [*range(15), *range(30, 35)]


def test_failed_flush_is_retried_without_loss_or_reordering() -> None:
    sink = RecordingSink()
    sink.fail = True
    writer = BufferedWriter(
        "t", sink, batch_size=10, flush_interval=0.01, queue_size=1000, max_backoff=0.05
    )
    writer.start()
    writer.submit(list(range(50)))
    time.sleep(0.3)
    assert writer.stats().failed_flushes >= 2
    assert writer.stats().written == 0
    sink.fail = False
    assert writer.flush(5)
    assert [x for b in sink.batches for x in b] == list(range(50))
    assert writer.close(5)


def test_duplicates_are_counted_not_written_twice() -> None:
    sink = RecordingSink()
    writer = BufferedWriter("t", sink, batch_size=10, flush_interval=0.01)
    writer.start()
    writer.submit([1, 2, 3])
    assert writer.flush(5)
    writer.submit([3, 4])
    assert writer.flush(5)
    assert writer.close(5)
    stats = writer.stats()
    assert (stats.written, stats.duplicates) == (4, 1)


def test_close_refuses_new_records() -> None:
    writer = BufferedWriter("t", RecordingSink(), batch_size=10, flush_interval=0.01)
    writer.start()
    assert writer.close(5)
    assert not writer.submit([1])
    assert writer.stats().dropped == 1


# -- the on-disk spool -----------------------------------------------------------------------------


def _spool(path: Path, max_bytes: int = 1 << 20) -> Spool[int]:
    return Spool(path, encode=lambda x: x, decode=int, max_bytes=max_bytes, segment_bytes=64)


def test_outage_spools_to_disk_then_replays_in_order_without_duplicates(tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail = True
    spool = _spool(tmp_path / "spool")
    writer = BufferedWriter(
        "t", sink, batch_size=7, flush_interval=0.01, queue_size=1000, max_backoff=0.05, spool=spool
    )
    writer.start()
    for start in range(0, 100, 10):
        assert writer.submit(list(range(start, start + 10)))
    deadline = time.monotonic() + 5
    while writer.stats().spooled < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.stats().spooled == 100 and writer.degraded
    assert len(list((tmp_path / "spool").glob("*.spool"))) > 1  # rotated segments
    assert not writer.flush(0.2)  # not in the store yet
    sink.fail = False
    assert writer.flush(5)
    assert [x for b in sink.batches for x in b] == list(range(100))
    assert writer.close(5) and not writer.degraded
    stats = writer.stats()
    assert (stats.written, stats.replayed, stats.duplicates, stats.spool_bytes) == (100, 100, 0, 0)


def test_a_restart_replays_what_the_previous_process_spooled(tmp_path: Path) -> None:
    first = _spool(tmp_path / "spool")
    first.append([1, 2, 3])
    first.append([4, 5])
    first.close()  # the process dies; its spool stays on disk
    # A crash tore the last line of the newest segment: that batch was never reported spooled.
    newest = sorted((tmp_path / "spool").glob("*.spool"))[-1]
    with open(newest, "ab") as handle:
        handle.write(b"[6,7")
    sink = RecordingSink()
    writer = BufferedWriter("t", sink, flush_interval=0.01, spool=_spool(tmp_path / "spool"))
    writer.start()
    writer.submit([8])
    assert writer.flush(5)
    assert [x for b in sink.batches for x in b] == [1, 2, 3, 4, 5, 8]
    assert writer.close(5)
    assert list((tmp_path / "spool").glob("*.spool")) == []


def test_replaying_a_segment_twice_stores_nothing_twice(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "spool")
    spool.append([1, 2])
    sink = RecordingSink()
    sink.seen.update({1, 2})  # a previous replay wrote them, then the process died
    writer = BufferedWriter("t", sink, flush_interval=0.01, spool=spool)
    writer.start()
    writer.submit([3])
    assert writer.flush(5)
    stats = writer.stats()
    assert (stats.written, stats.duplicates) == (1, 2)
    assert writer.close(5)


def test_one_process_per_spool(tmp_path: Path) -> None:
    from abkit.infra.spool import SpoolInUse

    first = _spool(tmp_path / "spool")
    with pytest.raises(SpoolInUse, match="ABKIT_SPOOL_DIR"):
        _spool(tmp_path / "spool")
    first.close()
    _spool(tmp_path / "spool").close()


def test_a_full_spool_means_back_pressure_not_loss(tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.fail = True
    spool = _spool(tmp_path / "spool", max_bytes=40)  # room for a few small batches
    writer = BufferedWriter(
        "t", sink, batch_size=5, flush_interval=0.01, queue_size=20, max_backoff=0.05, spool=spool
    )
    writer.start()
    accepted: list[int] = []
    refused = 0
    for start in range(0, 200, 5):
        batch = list(range(start, start + 5))
        if writer.submit(batch):
            accepted.extend(batch)
        else:
            refused += 1
        time.sleep(0.005)
    assert refused > 0  # the caller is told, nothing is dropped behind its back
    sink.fail = False
    assert writer.flush(10)
    assert sorted(x for b in sink.batches for x in b) == accepted
    assert writer.close(5)
