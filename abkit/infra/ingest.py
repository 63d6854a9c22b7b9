"""The ingest path of a server: where accepted exposures and events go, in either mode.

* :class:`DirectIngest` (no ``ABKIT_STREAM_URL``): rows are made durable in the local journal
  before the answer, and its drain copies them into the store.
* :class:`StreamIngest` (``ABKIT_STREAM_URL`` set): rows are published to JetStream before the
  answer (the local journal takes them while NATS is away, and forwards them when it returns);
  ``abkit loader`` processes copy the stream into the store.

Both expose the two :class:`~abkit.ports.Recorder` s the assignment service writes to, and the
same lifecycle and statistics, so the runtime, the health checks and the metrics need not know
which mode they run in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from abkit.config import Settings
from abkit.core.rows import RowKind
from abkit.infra.drain import JournalDrain
from abkit.infra.journal import Journal, JournalInUse
from abkit.infra.recorder import JournalRecorder
from abkit.infra.stream import StreamClient
from abkit.infra.stream_recorder import StreamSink
from abkit.ports import Recorder, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestStats:
    accepted_rows: int
    """Rows made durable (journal or stream)."""
    written: dict[str, int]
    """Rows inserted into the store by this process, per kind (direct mode)."""
    published_rows: int
    """Rows acknowledged by the stream (stream mode)."""
    refused: dict[str, int]
    backlog_rows: int
    """Rows durable in the local journal, not yet in the store (direct) or the stream."""
    backlog_bytes: int
    syncs: int
    failed_batches: int


class Ingest(Protocol):
    exposures: Recorder
    events: Recorder

    def start(self) -> None: ...

    def adopt(self, directories: Sequence[str]) -> None: ...

    @property
    def degraded(self) -> bool: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float) -> bool: ...

    def stats(self) -> IngestStats: ...


def _journal(settings: Settings, directory: str | None) -> Journal:
    return Journal(
        directory,
        max_bytes=settings.spool_max_mb << 20,
        commit_delay=settings.commit_delay_seconds,
    )


def _open_orphans(settings: Settings, directories: Sequence[str], verb: str) -> Iterator[Journal]:
    """Open each journal no process of this server writes any more; one still in use (locked
    by a live process) is left alone."""
    for directory in directories:
        journal = _journal(settings, directory)
        try:
            journal.open()
        except JournalInUse as exc:
            log.warning("not adopting %s: %s", directory, exc)
            continue
        log.warning(
            "%s the journal %s of a process that no longer exists (%d rows)",
            verb,
            directory,
            journal.stats().backlog_rows,
        )
        yield journal


class DirectIngest:
    """Journal first, then the store (the default, single-box mode)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self.journal = _journal(settings, settings.spool_path)
        self._recorders = {
            kind: JournalRecorder(self.journal, kind)
            for kind in (RowKind.EXPOSURES, RowKind.EVENTS)
        }
        self.exposures: Recorder = self._recorders[RowKind.EXPOSURES]
        self.events: Recorder = self._recorders[RowKind.EVENTS]
        self.drain = self._drain(self.journal)
        self._adopted: list[tuple[Journal, JournalDrain]] = []

    def _drain(self, journal: Journal) -> JournalDrain:
        return JournalDrain(
            journal,
            self._store,
            batch_rows=self._settings.writer_batch_size,
            interval=self._settings.writer_flush_seconds,
        )

    def start(self) -> None:
        self.journal.open()
        self.drain.start()

    def adopt(self, directories: Sequence[str]) -> None:
        """Drain journals no process of this server writes any more (``abkit grpc`` with fewer
        processes than last time) into the store; one still in use is left alone."""
        for journal in _open_orphans(self._settings, directories, "draining"):
            drain = self._drain(journal)
            drain.start()
            self._adopted.append((journal, drain))

    @property
    def degraded(self) -> bool:
        return self.drain.degraded or self.journal.failed

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.journal.sync(timeout):
            return False
        remaining = max(0.0, deadline - time.monotonic())
        return self.journal.wait_consumed(self.journal.durable_end, remaining)

    def close(self, timeout: float) -> bool:
        durable = self.journal.close(timeout)
        self.drain.stop(timeout)
        for journal, drain in self._adopted:
            journal.close(timeout)
            drain.stop(timeout)
            journal.release()
        left = self.journal.stats().backlog_rows
        clean = durable and (left == 0 or self.journal.directory is not None)
        _report(clean, left, self.journal)
        self.journal.release()
        return clean

    def stats(self) -> IngestStats:
        journal = self.journal.stats()
        drain = self.drain.stats()
        return IngestStats(
            accepted_rows=journal.durable_rows,
            written=drain.written,
            published_rows=0,
            refused={k.name.lower(): r.refused for k, r in self._recorders.items()},
            backlog_rows=journal.backlog_rows,
            backlog_bytes=journal.backlog_bytes + journal.pending_bytes,
            syncs=journal.syncs,
            failed_batches=drain.failed_batches,
        )


class StreamIngest:
    """The stream first (JetStream acknowledges before the answer), the journal when NATS is
    away; ``abkit loader`` processes fill the store."""

    def __init__(self, settings: Settings, name: str = "abkit-grpc") -> None:
        self._settings = settings
        self._adopted: list[tuple[Journal, StreamSink]] = []
        self.journal = _journal(settings, settings.spool_path)
        self.client = StreamClient(settings.stream(), name)
        self.sink = StreamSink(
            self.client, self.journal, commit_delay=settings.commit_delay_seconds
        )
        self.exposures: Recorder = self.sink.recorder(RowKind.EXPOSURES)
        self.events: Recorder = self.sink.recorder(RowKind.EVENTS)

    def start(self) -> None:
        self.journal.open()
        if not self.client.start(wait=3.0):
            log.warning("NATS is not reachable yet: accepted rows wait in the local journal")
        self.sink.start()

    def adopt(self, directories: Sequence[str]) -> None:
        """Forward journals no process of this server writes any more to the stream."""
        for journal in _open_orphans(self._settings, directories, "forwarding"):
            forwarder = StreamSink(self.client, journal)
            forwarder.start()
            self._adopted.append((journal, forwarder))

    @property
    def degraded(self) -> bool:
        return self.sink.degraded or self.journal.failed

    def flush(self, timeout: float) -> bool:
        """Everything accepted so far is in the stream (not yet necessarily in the store)."""
        return self.sink.flush(timeout)

    def close(self, timeout: float) -> bool:
        shipped = self.sink.close(timeout)
        durable = self.journal.close(timeout)
        for journal, forwarder in self._adopted:
            forwarder.close(timeout)
            journal.close(timeout)
            journal.release()
        left = self.journal.stats().backlog_rows
        clean = shipped and durable and (left == 0 or self.journal.directory is not None)
        _report(clean, left, self.journal)
        self.journal.release()
        self.client.close()
        return clean

    def stats(self) -> IngestStats:
        journal = self.journal.stats()
        sink = self.sink.stats()
        return IngestStats(
            accepted_rows=sink.published_rows + sink.journaled_rows,
            written={"exposures": 0, "events": 0},
            published_rows=sink.published_rows + sink.forwarded_rows,
            refused=sink.refused,
            backlog_rows=journal.backlog_rows,
            backlog_bytes=journal.backlog_bytes + journal.pending_bytes,
            syncs=journal.syncs,
            failed_batches=0,
        )


def build_ingest(settings: Settings, store: Store) -> DirectIngest | StreamIngest:
    return StreamIngest(settings) if settings.stream_url else DirectIngest(settings, store)


def _report(clean: bool, left: int, journal: Journal) -> None:
    if not clean:
        log.error("shutdown left %d rows that may be lost: %s", left, journal.stats())
    elif left:
        log.warning("%d rows wait in the journal %s", left, journal.directory)
