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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from abkit.config import Settings
from abkit.core.aliases import AliasNames
from abkit.core.hashing import pseudonym
from abkit.infra.clock import SystemClock
from abkit.infra.ingest import build_ingest
from abkit.infra.mlflow_registry import open_registry
from abkit.infra.notify import WebhookNotifier
from abkit.infra.outbox import OutboxRunner
from abkit.ports import Clock, ExternalModelRegistry, Store
from abkit.services.assignment import AssignmentService, Durability
from abkit.services.config import ConfigCache
from abkit.services.decisions import DecisionService
from abkit.services.experiments import ExperimentService
from abkit.services.privacy import PrivacyService
from abkit.services.registry import RegistrySync, VersionChecker
from abkit.services.results import ResultsService
from abkit.services.statistics import StatisticsService
from abkit.store.sql import SqlStore

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock | None = None,
        *,
        registry: ExternalModelRegistry | None = None,
    ) -> None:
        """``registry``: the external model registry, if not the one ``settings`` name
        (``ABKIT_MLFLOW_TRACKING_URI``; tests pass a twin)."""
        self.settings = settings
        self.store = store
        self.clock = clock or SystemClock()
        self.registry = registry if registry is not None else open_registry(settings)
        self.registry_sync = RegistrySync(
            store,
            self.clock,
            self.registry,
            max_retry_seconds=settings.mlflow_retry_max_seconds,
        )
        self.outbox = OutboxRunner(
            self.registry_sync.dispatch if self.registry is not None else None,
            interval=settings.worker_tick_seconds,
        )
        aliases = (
            AliasNames(settings.mlflow_champion_alias, settings.mlflow_previous_alias)
            if self.registry is not None
            else None
        )
        self.config = ConfigCache(store)
        self.ingest = build_ingest(settings, store)
        key = settings.unit_id_key.encode()
        self.pseudonymize = functools.partial(pseudonym, key) if key else None
        self.assignment = AssignmentService(
            self.config,
            self.ingest.exposures,
            self.ingest.events,
            self.clock,
            self.pseudonymize,
            durability=Durability(settings.exposure_durability),
            durable_timeout=settings.durability_timeout_seconds,
        )
        self.experiments = ExperimentService(
            store,
            self.clock,
            check_versions=VersionChecker(self.registry) if self.registry is not None else None,
        )
        self.privacy = PrivacyService(store, self.clock, self.pseudonymize)
        self.webhooks = WebhookNotifier()
        self.decisions = DecisionService(
            store,
            self.clock,
            listeners=(self.webhooks, self.outbox),
            reconcile_every=settings.reconcile_every,
            aliases=aliases,
        )
        self.results = ResultsService(store, self.clock)
        self.statistics = StatisticsService(store, self.clock)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, SqlStore.from_url(settings.database_url))

    def start(self) -> None:
        """Open the journal (recovering what a previous process left), start its drain, load
        the config (best effort) and start the periodic refresher."""
        if not self._started:
            self.ingest.start()
            self._started = True
        self.config.refresh()
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="abkit-config-refresh", daemon=True
            )
            self._refresher.start()

    def adopt_journals(self, directories: Sequence[str]) -> None:
        """Take over the journals of processes that no longer exist (``abkit grpc`` with fewer
        processes than last time): their rows go on to the store or the stream."""
        self.ingest.adopt(directories)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.config_refresh_seconds):
            self.config.refresh()

    @property
    def degraded(self) -> bool:
        """True while rows cannot reach the store (or the stream), or config refreshes fail."""
        return self.ingest.degraded or self.config.last_error is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every exposure and event accepted so far is in the store (direct mode) or
        in the stream (stream mode)."""
        return self.ingest.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop background work: make everything accepted durable, hand on (to the store or the
        stream) what it takes within ``timeout``. True when nothing accepted can be lost: it is
        in the store, the stream or, durably, the local journal for the next start."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout)
        clean = self.ingest.close(timeout)
        self.webhooks.close(timeout)
        self.outbox.close(timeout)
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
