"""Batched, background writing of exposures and events, off the request path.

``submit`` never blocks and never touches the database: it appends to a bounded in-memory queue
and returns. A daemon thread takes up to ``batch_size`` records at a time -- as soon as a batch is
full, or every ``flush_interval`` seconds -- and hands them to the sink (one transaction per
batch). Sinks are idempotent (first exposure per experiment and unit; one event per event id), so
a batch written twice cannot double count.

**Store outage.** When the sink raises :class:`~abkit.errors.StoreUnavailableError`, the batch
goes to the on-disk :class:`~abkit.infra.spool.Spool` (fsync'd), and so does every later batch while
the spool is not empty, which keeps the order. The thread replays the spool, oldest first, as
soon as the store answers again. Without a spool (tests), the batch is retried from memory.

**Full.** When the queue is full, ``submit`` refuses the whole batch and counts it as dropped:
the caller decides what that means (an exposure is dropped, a Track call answers UNAVAILABLE so
the client retries). The spool itself is bounded (see :mod:`abkit.infra.spool`): when it is full,
batches stay in memory, the queue fills, and ``submit`` starts refusing -- back-pressure rather
than silently losing records that were already accepted.

``close`` stops intake, writes (or spools) everything queued and joins the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from abkit.errors import AbkitError, StoreUnavailableError
from abkit.infra.spool import Spool, SpoolFull

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
    spooled: int = 0
    replayed: int = 0
    spool_bytes: int = 0


class BufferedWriter(Generic[T]):
    """A bounded queue drained into ``sink`` by one background thread, spooling on outages."""

    def __init__(
        self,
        name: str,
        sink: Callable[[Sequence[T]], int],
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        queue_size: int = 100_000,
        max_backoff: float = 5.0,
        spool: Spool[T] | None = None,
    ) -> None:
        self.name = name
        self._sink = sink
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._max_backoff = max_backoff
        self._spool = spool
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._accepted = 0
        self._done = 0  # accepted records now in the store (or given up)
        self._written = 0
        self._duplicates = 0
        self._dropped = 0
        self._failed_flushes = 0
        self._in_flight = 0
        self._flush_waiters = 0
        self._spooled = 0  # records sitting in the spool now
        self._spooled_total = 0
        self._replayed = 0
        self._store_down_until = 0.0
        self._backoff = 0.05
        self._down = False
        if spool is not None:
            self.attach_spool(spool)

    # -- the caller's side -----------------------------------------------------------------------

    def attach_spool(self, spool: Spool[T]) -> None:
        """Use ``spool`` from now on (call before :meth:`start`); replays what it holds.

        Records a previous process spooled were accepted then; they count as accepted now, so
        :meth:`flush` waits for them too.
        """
        with self._cond:
            self._spool = spool
            count = spool.record_count()
            self._spooled += count
            self._accepted += count

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
        """Wait until everything accepted so far is in the store; False on timeout."""
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
        """Stop accepting; write or spool what is queued; stop the thread.

        True when nothing accepted is left in memory (it is in the store or, durably, in the
        spool for the next start to replay).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        else:
            self._final_drain()
        with self._cond:
            clean = not self._queue and self._in_flight == 0
        if self._spool is not None:
            self._spool.close()
        return clean

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                accepted=self._accepted,
                written=self._written,
                duplicates=self._duplicates,
                dropped=self._dropped,
                failed_flushes=self._failed_flushes,
                queued=len(self._queue) + self._in_flight,
                spooled=self._spooled_total,
                replayed=self._replayed,
                spool_bytes=self._spool.bytes if self._spool is not None else 0,
            )

    @property
    def degraded(self) -> bool:
        """True while the store refuses writes (records are being spooled or held)."""
        return time.monotonic() < self._store_down_until or self._spooled > 0

    # -- the thread ------------------------------------------------------------------------------

    def _take(self) -> list[T]:
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        if self._spooled:
            self._replay()  # batches a previous process spooled are older than anything queued
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
                closing = self._closing
                batch = self._take() if self._queue else []
            if batch:
                self._handle(batch, closing=closing)
            if self._spooled and time.monotonic() >= self._store_down_until:
                self._replay()
            if closing and not batch:
                with self._cond:
                    if not self._queue:
                        return

    def _handle(self, batch: list[T], *, closing: bool) -> None:
        store_up = self._spooled == 0 and time.monotonic() >= self._store_down_until
        if store_up and self._write(batch):
            return
        if self._spool is not None:
            try:
                self._spool.append(batch)
            except (SpoolFull, OSError) as exc:
                log.error(
                    "writer %s cannot spool (%s); holding the batch in memory", self.name, exc
                )
            else:
                with self._cond:
                    self._spooled += len(batch)
                    self._spooled_total += len(batch)
                    self._in_flight = 0
                    self._cond.notify_all()
                return
        with self._cond:  # keep it, in order, and try again after the back-off
            self._queue.extendleft(reversed(batch))
            self._in_flight = 0
        time.sleep(min(self._backoff, 0.5 if closing else self._backoff))

    def _write(self, batch: list[T]) -> bool:
        """One queued batch into the store; False (and the store marked down) on failure."""
        if not self._store(batch, replayed=False):
            return False
        self._mark_up()
        return True

    def _store(self, batch: Sequence[T], *, replayed: bool) -> bool:
        """Hand ``batch`` to the sink and count the outcome: written, duplicates, done (and
        replayed, for a spooled batch). On failure the store is marked down."""
        try:
            new = self._sink(batch)
        except AbkitError as exc:
            with self._cond:
                self._failed_flushes += 1
            self._mark_down(exc)
            return False
        with self._cond:
            self._written += new
            self._duplicates += len(batch) - new
            self._done += len(batch)
            if replayed:
                self._replayed += len(batch)
                self._spooled = max(0, self._spooled - len(batch))
            else:
                self._in_flight = 0
            self._cond.notify_all()
        return True

    def _mark_down(self, exc: AbkitError) -> None:
        if not self._down:  # log the transition, not every retry
            level = logging.WARNING if isinstance(exc, StoreUnavailableError) else logging.ERROR
            where = "spooling to disk" if self._spool is not None else "holding in memory"
            log.log(level, "writer %s: the store refuses writes (%s); %s", self.name, exc, where)
            self._down = True
        self._store_down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)

    def _mark_up(self) -> None:
        self._backoff = 0.05
        if self._down:
            self._down = False
            log.warning("writer %s: the store accepts writes again", self.name)

    def _replay(self) -> None:
        """Write the spool to the store, oldest segment first, until done or the store fails."""
        if self._spool is None:
            return
        while True:
            oldest = self._spool.oldest()
            if oldest is None:
                with self._cond:
                    self._spooled = 0
                return
            path, batches = oldest
            for batch in batches:
                if not self._store(batch, replayed=True):
                    return  # the segment stays; replaying it again duplicates nothing
            self._spool.remove(path)
            self._mark_up()

    def _final_drain(self) -> None:
        """``close`` without a thread: handle the queue once, synchronously."""
        while True:
            with self._cond:
                if not self._queue:
                    return
                batch = self._take()
            if not self._write(batch):
                if self._spool is not None:
                    try:
                        self._spool.append(batch)
                        continue
                    except (SpoolFull, OSError):
                        pass
                with self._cond:
                    self._dropped += len(batch)
                    self._done += len(batch)
                    self._in_flight = 0
                return
