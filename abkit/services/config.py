"""The experiment config a server assigns from: compiled once, refreshed from the store.

A failed refresh (store down, invalid config) keeps serving the last good config: assignment
must keep answering while the database is away.
"""

from __future__ import annotations

import logging
import threading

from abkit.core.assignment import Catalog
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
                records = tx.experiments.list()
            signature = tuple((r.key, r.revision) for r in records)
            if signature == self._signature and self._catalog is not None:
                self.last_error = None
                return True  # unchanged: keep the compiled config (and every cache keyed on it)
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
        return True
