"""The experiment config a server assigns from: compiled once, refreshed from the store.

A refresh first reads each experiment's revision (one small query); only when one changed does
it load and compile the whole config, then tell its listeners (the config stream of
:mod:`abkit.rpc.config_feed`). A failed refresh (store down, invalid config) keeps serving the
last good config: assignment must keep answering while the database is away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from abkit.core.assignment import Catalog
from abkit.core.model import Experiment
from abkit.errors import AbkitError, StoreUnavailableError
from abkit.ports import Store

log = logging.getLogger(__name__)


class ConfigCache:
    """The compiled experiment config, swapped atomically on refresh.

    A failed refresh (store down, invalid config) keeps serving the last good config: assignment
    must keep answering while the database is away.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.failures = 0
        self._signature: tuple[tuple[str, int], ...] = ()
        self._listeners: list[Callable[[Sequence[Experiment]], None]] = []

    def subscribe(self, listener: Callable[[Sequence[Experiment]], None]) -> None:
        """Call ``listener(experiments)`` now (if loaded) and after every change."""
        with self._lock:
            self._listeners.append(listener)
            if self._catalog is not None:
                listener(self._catalog.experiments)

    @property
    def loaded(self) -> bool:
        return self._catalog is not None

    @property
    def catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is None:
            raise StoreUnavailableError(
                "the experiment config has not been loaded yet; the store may be unreachable"
            )
        return catalog

    def refresh(self) -> bool:
        """Reload from the store; True on success."""
        try:
            with self._store.transaction() as tx:
                signature: tuple[tuple[str, int], ...] = tuple(tx.experiments.revisions())
                if signature == self._signature and self._catalog is not None:
                    self.last_error = None
                    return True  # unchanged: keep the compiled config (and every cache on it)
                records = tx.experiments.list()
            signature = tuple((r.key, r.revision) for r in records)
            catalog = Catalog(r.experiment for r in records)
        except AbkitError as exc:
            self.last_error = str(exc)
            self.failures += 1
            log.warning("experiment config refresh failed, serving the previous config: %s", exc)
            return False
        with self._lock:
            self._catalog = catalog
            self._signature = signature
            self.last_error = None
            for listener in self._listeners:  # under the lock: listeners see changes in order
                try:
                    listener(catalog.experiments)
                except Exception:  # a listener's failure must not stop the refresher
                    log.exception("a config listener failed")
        return True
