"""The in-memory twin of the MLflow registry adapter, for tests of the dispatcher.

It keeps :class:`abkit.ports.ExternalModelRegistry`'s contract (the conformance suite runs the
same checks against it and a real ``mlflow server``), records every write, and can be made to
fail: ``available = False`` is an outage, ``fail_after(n)`` fails the call after ``n`` more.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from abkit.errors import NotFoundError, RegistryUnavailableError


@dataclass
class _Model:
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class MemoryRegistry:
    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self.available = True
        self.writes: list[tuple[str, ...]] = []
        """Every write, as ``(operation, model, ...)``."""
        self._calls_left: int | None = None

    @property
    def location(self) -> str:
        return "in-memory registry"

    def add_version(self, model: str, version: str) -> None:
        """Register a version (what a training pipeline does)."""
        with self._lock:
            self._models.setdefault(model, _Model()).versions.setdefault(version, {})

    def tags(self, model: str, version: str) -> dict[str, str]:
        with self._lock:
            return dict(self._models[model].versions[version])

    def fail_after(self, calls: int | None) -> None:
        """Fail every call after ``calls`` more have succeeded (None: never)."""
        self._calls_left = calls

    def version_exists(self, model: str, version: str) -> bool:
        with self._lock:
            self._check()
            return version in self._models.get(model, _Model()).versions

    def aliases(self, model: str) -> dict[str, str]:
        with self._lock:
            self._check()
            return dict(self._models.get(model, _Model()).aliases)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        with self._lock:
            self._check()
            self._version(model, version)
            self._models[model].aliases[alias] = version
            self.writes.append(("set_alias", model, alias, version))

    def delete_alias(self, model: str, alias: str) -> None:
        with self._lock:
            self._check()
            if model in self._models:
                self._models[model].aliases.pop(alias, None)
            self.writes.append(("delete_alias", model, alias))

    def set_tag(self, model: str, version: str, key: str, value: str) -> None:
        with self._lock:
            self._check()
            self._version(model, version)[key] = value
            self.writes.append(("set_tag", model, version, key, value))

    def _version(self, model: str, version: str) -> dict[str, str]:
        try:
            return self._models[model].versions[version]
        except KeyError:
            raise NotFoundError(f"models:/{model}/{version} does not exist") from None

    def _check(self) -> None:
        if not self.available:
            raise RegistryUnavailableError("the in-memory registry is marked unavailable")
        if self._calls_left is not None:
            if self._calls_left <= 0:
                raise RegistryUnavailableError("the in-memory registry failed on purpose")
            self._calls_left -= 1
