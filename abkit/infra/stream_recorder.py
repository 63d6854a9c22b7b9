"""The recorders of a server in stream mode: rows published to JetStream before the answer.

:class:`StreamSink` group-commits like the journal (:mod:`abkit.infra.journal`), with a
JetStream publish acknowledgement as the commit: recorded rows gather in an open group; a
flusher thread publishes the group as soon as somebody waits for it (one message per kind and
up to :data:`~abkit.infra.stream.MAX_MESSAGE_BYTES`, each with its own ``Nats-Msg-Id``) and the
waiters are answered once every message is acknowledged -- stored by the stream's replicas.

**NATS away** (unreachable, a publish not acknowledged within ``publish_timeout``): the group
goes to the local journal instead (fsync'd: still durable before the answer) and so does every
group after it, so that a process's rows reach the stream in the order they were accepted; a
forwarder thread publishes the journal's records as soon as NATS answers again (their message
ids are derived from the journal position, so a forward repeated after a crash is stored once)
and, once the journal is empty, the sink publishes directly again. The journal's bound is the
back-pressure: when it is full, calls answer UNAVAILABLE.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from abkit.core.rows import RowKind
from abkit.errors import StoreUnavailableError
from abkit.infra.journal import (
    COMMIT_SIBLINGS,
    FLUSH_INTERVAL,
    Group,
    Journal,
    Position,
    Receipt,
    Record,
)
from abkit.infra.stream import MAX_MESSAGE_BYTES, Publisher

log = logging.getLogger(__name__)

MAX_PENDING_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class SinkStats:
    published_rows: int
    journaled_rows: int
    forwarded_rows: int
    refused: dict[str, int]
    fallback: bool


class StreamRecorder:
    """One kind's :class:`~abkit.ports.Recorder` view of a :class:`StreamSink`."""

    def __init__(self, sink: StreamSink, kind: RowKind) -> None:
        self._sink = sink
        self._kind = kind

    @property
    def refused(self) -> int:
        return self._sink.refused[self._kind]

    def record(self, text: str, rows: int) -> Receipt:
        return self._sink.append(self._kind, text, rows)


class StreamSink:
    def __init__(
        self,
        client: Publisher,
        journal: Journal,
        *,
        commit_delay: float = 0.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._client = client
        self._journal = journal
        self._commit_delay = commit_delay
        self._max_backoff = max_backoff
        self._instance = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._pending: list[tuple[RowKind, str, int]] = []
        self._pending_bytes = 0
        self._group = Group()
        self._urgent = False
        self._closing = False
        self._shipping = False
        self._fallback = False
        self._sequence = 0
        self._last_flush = 0.0
        self._last_group = 0
        self.refused = {RowKind.EXPOSURES: 0, RowKind.EVENTS: 0}
        self._published = 0
        self._journaled = 0
        self._forwarded = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def recorder(self, kind: RowKind) -> StreamRecorder:
        return StreamRecorder(self, kind)

    def start(self) -> None:
        """Call after the journal is open: what it holds from an earlier process is forwarded
        first, and until then new rows queue behind it."""
        self._fallback = self._journal.stats().backlog_rows > 0
        for target, name in ((self._run, "abkit-publisher"), (self._forward, "abkit-forwarder")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- the request side ------------------------------------------------------------------------

    def append(self, kind: RowKind, text: str, rows: int) -> Receipt:
        with self._lock:
            if self._closing:
                self.refused[kind] += rows
                raise StoreUnavailableError("the server is stopping")
            if self._pending_bytes + len(text) > MAX_PENDING_BYTES:
                self.refused[kind] += rows
                raise StoreUnavailableError("too many rows wait for the stream; retry shortly")
            self._pending.append((kind, text, rows))
            self._pending_bytes += len(text)
            return Receipt(self, self._group)

    def _hurry(self) -> None:
        with self._lock:
            if not self._urgent:
                self._urgent = True
                self._work.notify()

    # -- the publisher ---------------------------------------------------------------------------

    def _run(self) -> None:
        with self._lock:
            while True:
                if (
                    self._pending
                    and self._urgent
                    and not self._closing
                    and self._commit_delay
                    and self._last_group >= COMMIT_SIBLINGS
                ):
                    self._lock.release()
                    time.sleep(self._commit_delay)
                    self._lock.acquire()
                due = time.monotonic() - self._last_flush >= FLUSH_INTERVAL
                if self._pending and (self._urgent or self._closing or due):
                    self._flush_locked()
                elif self._closing and not self._pending:
                    return
                else:
                    self._work.wait(FLUSH_INTERVAL)

    def _flush_locked(self) -> None:
        batch, group = self._pending, self._group
        self._last_group = len(batch)
        self._pending, self._pending_bytes, self._group = [], 0, Group()
        self._urgent = False
        self._shipping = True
        fallback = self._fallback
        self._lock.release()
        try:
            durable = self._ship(batch, fallback)
        finally:
            self._lock.acquire()
            self._shipping = False
            self._last_flush = time.monotonic()
        group.finish(durable)

    def _ship(self, batch: list[tuple[RowKind, str, int]], fallback: bool) -> bool:
        messages = _messages(batch)
        if not fallback and self._client.connected.is_set():
            with self._lock:
                first = self._sequence
                self._sequence += len(messages)
            futures = [
                self._client.publish(kind, body, rows, f"{self._instance}-{first + i}")
                for i, (kind, body, rows) in enumerate(messages)
            ]
            if _all_acknowledged(futures, self._client.settings.publish_timeout + 1.0):
                self._published += sum(rows for _, _, rows in messages)
                return True
            log.warning("stream: publish not acknowledged; rows go to the local journal")
        if not fallback:
            with self._lock:  # until the forwarder has caught up, every group goes there
                self._fallback = True
        return self._to_journal(messages)

    def _to_journal(self, messages: list[tuple[RowKind, bytes, int]]) -> bool:
        try:
            receipts = [self._journal.append(kind, body, rows) for kind, body, rows in messages]
        except StoreUnavailableError as exc:
            log.error("stream: NATS is away and the journal refuses rows: %s", exc)
            for kind, _, rows in messages:
                self.refused[kind] += rows
            return False
        self._journaled += sum(rows for _, _, rows in messages)
        return all(r.wait(10.0) for r in receipts)

    # -- the forwarder ---------------------------------------------------------------------------

    def _forward(self) -> None:
        """Publish the journal's records, in order, whenever NATS answers; checkpoint each
        acknowledged batch; switch the sink back to direct publishing once the journal is
        empty."""
        position = self._journal.checkpoint
        backoff = 0.1
        while not self._stop.is_set():
            records = self._journal.read(position, max_rows=5000, timeout=0.2)
            if not records:
                with self._lock:
                    caught_up = self._journal.durable_end <= position and not self._shipping
                    if self._fallback and caught_up:
                        self._fallback = False
                        log.warning("stream: the journal is forwarded; publishing directly again")
                continue
            if not self._client.connected.is_set() or not self._publish_records(records):
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.1
            rows = sum(r.rows for r in records)
            position = records[-1].end
            self._journal.consumed(position, rows)
            self._forwarded += rows

    def _publish_records(self, records: list[Record]) -> bool:
        identity = self._journal.identity
        futures = [
            self._client.publish(r.kind, r.payload, r.rows, f"{identity}-{_position_id(r.end)}")
            for r in records
        ]
        return _all_acknowledged(futures, self._client.settings.publish_timeout + 1.0)

    # -- the rest --------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._fallback or not self._client.connected.is_set()

    def stats(self) -> SinkStats:
        return SinkStats(
            published_rows=self._published,
            journaled_rows=self._journaled,
            forwarded_rows=self._forwarded,
            refused={k.name.lower(): v for k, v in self.refused.items()},
            fallback=self._fallback,
        )

    def flush(self, timeout: float) -> bool:
        """Wait until everything recorded so far is in the stream (the journal forwarded)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            group = self._group if self._pending else None
        if group is not None and not Receipt(self, group).wait(timeout):
            return False
        while time.monotonic() < deadline:
            with self._lock:
                if not self._fallback and not self._pending and not self._shipping:
                    return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Ship what is pending (to the stream, or the journal), forward what NATS takes within
        ``timeout``, stop. True when nothing accepted is left in memory."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
        self._threads[0].join(timeout) if self._threads else None
        deadline = time.monotonic() + timeout
        while self._fallback and time.monotonic() < deadline and self._client.connected.is_set():
            time.sleep(0.05)
        self._stop.set()
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        with self._lock:
            return not self._pending


def _messages(batch: list[tuple[RowKind, str, int]]) -> list[tuple[RowKind, bytes, int]]:
    """A group's rows as messages: per kind, consecutive rows up to MAX_MESSAGE_BYTES each."""
    messages: list[tuple[RowKind, bytes, int]] = []
    for kind in (RowKind.EXPOSURES, RowKind.EVENTS):
        parts: list[str] = []
        size = rows = 0
        for k, text, n in batch:
            if k is not kind:
                continue
            if parts and size + len(text) > MAX_MESSAGE_BYTES:
                messages.append((kind, "".join(parts).encode(), rows))
                parts, size, rows = [], 0, 0
            parts.append(text)
            size += len(text)
            rows += n
        if parts:
            messages.append((kind, "".join(parts).encode(), rows))
    return messages


def _all_acknowledged(futures: list[concurrent.futures.Future[object]], timeout: float) -> bool:
    """True when every publish was acknowledged within ``timeout``. The futures are never
    cancelled: each publish ends on its own timeout, and its outcome is consumed either way."""
    done, pending = concurrent.futures.wait(futures, timeout)
    failed = [f.exception() for f in done if f.exception() is not None]
    if failed or pending:
        log.debug("stream: %d publishes failed (%s), %d unanswered", len(failed),
                  failed[:1], len(pending))  # fmt: skip
        return False
    return True


def _position_id(position: Position) -> str:
    return f"{position.segment}.{position.offset}"
