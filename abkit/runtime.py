"""Wiring: one :class:`Runtime` owns the store, the writers, the config cache and the use cases.

Every use case is built here, once, and shared by whoever serves it -- the CLI, the web app,
the gRPC server, the worker. The CLI builds it from :class:`~abkit.config.Settings` (with
:func:`open_runtime`, which always closes it); tests build it around any store (memory, SQLite,
PostgreSQL). Background work -- the writers' flush threads and the config refresher -- starts
with :meth:`Runtime.start` and stops, flushing everything accepted, with :meth:`Runtime.close`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from abkit.config import Settings
from abkit.core.assignment import Exposure
from abkit.core.hashing import pseudonym
from abkit.core.model import Event
from abkit.infra.clock import SystemClock
from abkit.infra.notify import WebhookNotifier
from abkit.infra.spool import Spool
from abkit.infra.writer import BufferedWriter
from abkit.ports import Clock, Store
from abkit.services.assignment import AssignmentService
from abkit.services.config import ConfigCache
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.privacy import PrivacyService
from abkit.services.results import ResultsService
from abkit.store.sql import SqlStore

log = logging.getLogger(__name__)


def _encode(row: Exposure | Event) -> list[object]:
    return [v.isoformat() if isinstance(v, datetime) else v for v in row]


def _decode_exposure(doc: list[object]) -> Exposure:
    values = list(doc)
    values[5] = datetime.fromisoformat(str(values[5]))
    return Exposure(*values)  # type: ignore[arg-type]


def _decode_event(doc: list[object]) -> Event:
    values = list(doc)
    values[4] = datetime.fromisoformat(str(values[4]))
    return Event(*values)  # type: ignore[arg-type]


class Runtime:
    def __init__(self, settings: Settings, store: Store, clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or SystemClock()
        self.config = ConfigCache(store)
        self.exposure_writer: BufferedWriter[Exposure] = BufferedWriter(
            "exposures",
            self._write_exposures,
            batch_size=settings.writer_batch_size,
            flush_interval=settings.writer_flush_seconds,
            queue_size=settings.writer_queue_size,
        )
        self.event_writer: BufferedWriter[Event] = BufferedWriter(
            "events",
            self._write_events,
            batch_size=settings.writer_batch_size,
            flush_interval=settings.writer_flush_seconds,
            queue_size=settings.writer_queue_size,
        )
        key = settings.unit_id_key.encode()
        self.pseudonymize = functools.partial(pseudonym, key) if key else None
        self.assignment = AssignmentService(
            self.config, self.exposure_writer, self.event_writer, self.clock, self.pseudonymize
        )
        self.experiments = ExperimentService(store, self.clock)
        self.privacy = PrivacyService(store, self.clock, self.pseudonymize)
        self.webhooks = WebhookNotifier()
        self.decisions = DecisionService(store, self.clock, listeners=(self.webhooks,))
        self.results = ResultsService(store, self.clock)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, SqlStore.from_url(settings.database_url))

    def _write_exposures(self, batch: Sequence[Exposure]) -> int:
        with self.store.transaction() as tx:
            return tx.exposures.add(batch)

    def _write_events(self, batch: Sequence[Event]) -> int:
        with self.store.transaction() as tx:
            return tx.events.add(batch)

    def start(self) -> None:
        """Load the config (best effort), start the writers and the periodic refresher."""
        spool_path = self.settings.spool_path
        if spool_path is not None:
            root = Path(spool_path)
            limit = self.settings.spool_max_mb << 20
            self.exposure_writer.attach_spool(
                Spool(root / "exposures", encode=_encode, decode=_decode_exposure, max_bytes=limit)
            )
            self.event_writer.attach_spool(
                Spool(root / "events", encode=_encode, decode=_decode_event, max_bytes=limit)
            )
        self.config.refresh()
        self.exposure_writer.start()
        self.event_writer.start()
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="abkit-config-refresh", daemon=True
            )
            self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.config_refresh_seconds):
            self.config.refresh()

    @property
    def degraded(self) -> bool:
        """True while the store is unreachable for writes or for config refreshes."""
        return (
            self.exposure_writer.degraded
            or self.event_writer.degraded
            or self.config.last_error is not None
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every exposure and event accepted so far is in the store."""
        return self.exposure_writer.flush(timeout) and self.event_writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop background work and write everything accepted; True if nothing was left over."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout)
        clean = self.exposure_writer.close(timeout)
        clean = self.event_writer.close(timeout) and clean
        if not clean:
            log.error(
                "shutdown left unwritten records: %s %s",
                self.exposure_writer.stats(),
                self.event_writer.stats(),
            )
        self.webhooks.close(timeout)
        self.store.close()
        return clean


@contextmanager
def open_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime on ``settings.database_url``, closed (writers flushed, store released) however
    the block ends."""
    runtime = Runtime.from_settings(settings)
    try:
        yield runtime
    finally:
        runtime.close()
