"""Batched, background writing of exposures and events, off the request path.

``submit`` never blocks and never touches the database: it appends to a bounded in-memory queue
and returns. A daemon thread takes up to ``batch_size`` records at a time -- as soon as a batch is
full, or every ``flush_interval`` seconds -- and hands them to the sink (one transaction per
batch). Sinks are idempotent (first exposure per experiment and unit; one event per event id), so
a batch retried after a failure cannot double count.

When the queue is full, ``submit`` refuses the whole batch and counts it as dropped: the caller
decides what that means (an exposure is dropped, a Track call answers UNAVAILABLE so the client
retries). When the sink fails, the batch is retried with exponential back-off while new records
keep queueing. ``close`` stops intake, drains the queue and joins the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from abkit.errors import AbkitError

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterStats:
    accepted: int
    written: int
    duplicates: int
    dropped: int
    failed_flushes: int
    queued: int


class BufferedWriter(Generic[T]):
    """A bounded queue drained into ``sink`` by one background thread."""

    def __init__(
        self,
        name: str,
        sink: Callable[[Sequence[T]], int],
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        queue_size: int = 100_000,
        max_backoff: float = 5.0,
    ) -> None:
        self.name = name
        self._sink = sink
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._max_backoff = max_backoff
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._accepted = 0
        self._done = 0  # accepted records that left the queue (written, duplicate or given up)
        self._written = 0
        self._duplicates = 0
        self._dropped = 0
        self._failed_flushes = 0
        self._in_flight = 0
        self._flush_waiters = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"abkit-writer-{self.name}", daemon=True
            )
            self._thread.start()

    def submit(self, items: Sequence[T]) -> bool:
        """Queue all of ``items`` or none of them; False (and counted dropped) when full/closed."""
        with self._cond:
            if self._closing or len(self._queue) + len(items) > self._queue_size:
                self._dropped += len(items)
                return False
            self._queue.extend(items)
            self._accepted += len(items)
            if len(self._queue) >= self._batch_size:
                self._cond.notify()
            return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted so far has been handled; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, write what is queued, stop the thread. False if records remained."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        else:
            self._drain_once(give_up_on_error=True)
        with self._cond:
            return not self._queue and self._in_flight == 0

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                accepted=self._accepted,
                written=self._written,
                duplicates=self._duplicates,
                dropped=self._dropped,
                failed_flushes=self._failed_flushes,
                queued=len(self._queue) + self._in_flight,
            )

    def _take(self) -> list[T]:
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                # Wait for a full batch, the flush interval, a flush() call or close().
                deadline = time.monotonic() + self._flush_interval
                while (
                    len(self._queue) < self._batch_size
                    and not self._closing
                    and not self._flush_waiters
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    if self._closing:
                        return
                    continue
                batch = self._take()
                give_up = self._closing and backoff >= self._max_backoff
            if self._write(batch, give_up=give_up):
                backoff = 0.05
            else:
                time.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _drain_once(self, *, give_up_on_error: bool) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    return
                batch = self._take()
            if not self._write(batch, give_up=give_up_on_error):
                return

    def _write(self, batch: list[T], *, give_up: bool) -> bool:
        try:
            new = self._sink(batch)
        except AbkitError as exc:
            with self._cond:
                self._failed_flushes += 1
                if give_up:
                    self._dropped += len(batch)
                    self._done += len(batch)
                    self._in_flight = 0
                    log.error("writer %s dropped %d records: %s", self.name, len(batch), exc)
                else:
                    # Put the batch back in front, in order, and retry after a back-off.
                    self._queue.extendleft(reversed(batch))
                    self._in_flight = 0
                    log.warning("writer %s: flush failed, will retry: %s", self.name, exc)
                self._cond.notify_all()
            return give_up
        with self._cond:
            self._written += new
            self._duplicates += len(batch) - new
            self._done += len(batch)
            self._in_flight = 0
            self._cond.notify_all()
        return True
