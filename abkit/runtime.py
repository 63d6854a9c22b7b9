"""Wiring: one :class:`Runtime` owns the store, the writers, the config cache and the use cases.

Every use case is built here, once, and shared by whoever serves it -- the CLI, the web app,
the gRPC server, the worker. The CLI builds it from :class:`~abkit.config.Settings` (with
:func:`open_runtime`, which always closes it); tests build it around any store (memory, SQLite,
PostgreSQL). Background work -- the journal's flusher and drain, and the config refresher --
starts with :meth:`Runtime.start` and stops, with everything accepted durable, with
:meth:`Runtime.close`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from abkit.config import Settings
from abkit.core.hashing import pseudonym
from abkit.core.rows import RowKind
from abkit.infra.clock import SystemClock
from abkit.infra.drain import JournalDrain
from abkit.infra.journal import Journal, JournalInUse
from abkit.infra.notify import WebhookNotifier
from abkit.infra.recorder import JournalRecorder
from abkit.ports import Clock, Store
from abkit.services.assignment import AssignmentService, Durability
from abkit.services.config import ConfigCache
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.privacy import PrivacyService
from abkit.services.results import ResultsService
from abkit.store.sql import SqlStore

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, store: Store, clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or SystemClock()
        self.config = ConfigCache(store)
        self.journal = Journal(
            settings.spool_path,
            max_bytes=settings.spool_max_mb << 20,
            commit_delay=settings.commit_delay_seconds,
        )
        self.exposure_recorder = JournalRecorder(self.journal, RowKind.EXPOSURES)
        self.event_recorder = JournalRecorder(self.journal, RowKind.EVENTS)
        self.drain = JournalDrain(
            self.journal,
            store,
            batch_rows=settings.writer_batch_size,
            interval=settings.writer_flush_seconds,
        )
        key = settings.unit_id_key.encode()
        self.pseudonymize = functools.partial(pseudonym, key) if key else None
        self.assignment = AssignmentService(
            self.config,
            self.exposure_recorder,
            self.event_recorder,
            self.clock,
            self.pseudonymize,
            durability=Durability(settings.exposure_durability),
            durable_timeout=settings.durability_timeout_seconds,
        )
        self.experiments = ExperimentService(store, self.clock)
        self.privacy = PrivacyService(store, self.clock, self.pseudonymize)
        self.webhooks = WebhookNotifier()
        self.decisions = DecisionService(store, self.clock, listeners=(self.webhooks,))
        self.results = ResultsService(store, self.clock)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._started = False
        self._adopted: list[tuple[Journal, JournalDrain]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, SqlStore.from_url(settings.database_url))

    def start(self) -> None:
        """Open the journal (recovering what a previous process left), start its drain, load
        the config (best effort) and start the periodic refresher."""
        if not self._started:
            self.journal.open()
            self.drain.start()
            self._started = True
        self.config.refresh()
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="abkit-config-refresh", daemon=True
            )
            self._refresher.start()

    def adopt_journals(self, directories: Sequence[str]) -> None:
        """Drain journals that no process of this server writes any more (``abkit grpc`` with
        fewer processes than last time) into the store; one still in use is left alone."""
        for directory in directories:
            journal = Journal(directory, max_bytes=self.settings.spool_max_mb << 20)
            try:
                journal.open()
            except JournalInUse as exc:
                log.warning("not adopting %s: %s", directory, exc)
                continue
            drain = JournalDrain(journal, self.store, batch_rows=self.settings.writer_batch_size)
            drain.start()
            log.warning(
                "draining the journal %s of a process that no longer exists (%d rows)",
                directory,
                journal.stats().backlog_rows,
            )
            self._adopted.append((journal, drain))

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.config_refresh_seconds):
            self.config.refresh()

    @property
    def degraded(self) -> bool:
        """True while the store refuses writes or config refreshes, or the journal failed."""
        return self.drain.degraded or self.journal.failed or self.config.last_error is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every exposure and event accepted so far is in the store."""
        deadline = time.monotonic() + timeout
        if not self.journal.sync(timeout):
            return False
        return self.journal.wait_consumed(
            self.journal.durable_end, max(0.0, deadline - time.monotonic())
        )

    def close(self, timeout: float = 10.0) -> bool:
        """Stop background work: make everything accepted durable, copy what the store takes
        within ``timeout``, release the journal. True when nothing accepted can be lost: it is
        in the store or, durably, in the journal for the next start (a journal in memory must
        be empty)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout)
        durable = self.journal.close(timeout)
        self.drain.stop(timeout)
        for journal, drain in self._adopted:
            journal.close(timeout)
            drain.stop(timeout)
            journal.release()
        left = self.journal.stats().backlog_rows
        clean = durable and (left == 0 or self.journal.directory is not None)
        if not clean:
            log.error("shutdown left %d rows that may be lost: %s", left, self.journal.stats())
        elif left:
            log.warning(
                "%d rows wait in the journal %s for the store", left, self.journal.directory
            )
        self.journal.release()
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
