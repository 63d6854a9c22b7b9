"""The background writer: batches, never blocks the caller, retries, flushes on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from abkit.errors import StoreUnavailableError
from abkit.writer import BufferedWriter


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
    writer.flush(5)
    writer.submit([3, 4])
    writer.flush(5)
    writer.close(5)
    stats = writer.stats()
    assert (stats.written, stats.duplicates) == (4, 1)


def test_close_refuses_new_records() -> None:
    writer = BufferedWriter("t", RecordingSink(), batch_size=10, flush_interval=0.01)
    writer.start()
    assert writer.close(5)
    assert not writer.submit([1])
    assert writer.stats().dropped == 1
