"""The MLflow Model Registry behind :class:`abkit.ports.ExternalModelRegistry` (extra
``abkit[mlflow]``).

MLflow is imported on first use, not at start-up (importing it takes seconds), and only when
``ABKIT_MLFLOW_TRACKING_URI`` is set; a missing extra is a configuration error that says what to
install. Every call goes through :class:`mlflow.MlflowClient`, so MLflow's own settings apply:
its credentials (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) and its
HTTP retries and timeout (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``),
which bound how long one attempt of the dispatcher can take.

MLflow's errors are translated once, here: a missing model or version is
:class:`~abkit.errors.NotFoundError`, anything else (unreachable, a 5xx, an unexpected answer)
:class:`~abkit.errors.RegistryUnavailableError` -- the dispatcher retries both.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias, TypeVar

from abkit.config import Settings
from abkit.errors import NotFoundError, RegistryUnavailableError, ValidationError

T = TypeVar("T")
MlflowClient: TypeAlias = Any
"""``mlflow.MlflowClient``: imported at run time only (MLflow ships no type information)."""

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class MlflowRegistry:
    """An MLflow tracking server's (or registry's) model registry."""

    def __init__(self, tracking_uri: str, registry_uri: str = "") -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ValidationError(
                "ABKIT_MLFLOW_TRACKING_URI",
                "is set, but MLflow is not installed here: pip install 'abkit[mlflow]' "
                "(or unset it to leave MLflow's aliases alone)",
            )
        self._tracking_uri = tracking_uri
        self._registry_uri = registry_uri or tracking_uri
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"MLflow at {self._registry_uri}"

    def version_exists(self, model: str, version: str) -> bool:
        try:
            self._call(lambda c: c.get_model_version(model, version))
        except NotFoundError:
            return False
        return True

    def aliases(self, model: str) -> dict[str, str]:
        try:
            registered = self._call(lambda c: c.get_registered_model(model))
        except NotFoundError:
            return {}
        return {str(alias): str(version) for alias, version in dict(registered.aliases).items()}

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._call(lambda c: c.set_registered_model_alias(model, alias, version))

    def delete_alias(self, model: str, alias: str) -> None:
        if alias in self.aliases(model):  # MLflow refuses to delete an alias that is not set
            self._call(lambda c: c.delete_registered_model_alias(model, alias))

    def set_tag(self, model: str, version: str, key: str, value: str) -> None:
        self._call(lambda c: c.set_model_version_tag(model, version, key, value))

    def _call(self, request: Callable[[MlflowClient], T]) -> T:
        with self._errors():
            return request(self._mlflow())

    def _mlflow(self) -> MlflowClient:
        with self._lock:
            if self._client is None:
                mlflow = importlib.import_module("mlflow")
                self._client = mlflow.MlflowClient(
                    tracking_uri=self._tracking_uri, registry_uri=self._registry_uri
                )
            return self._client

    @contextmanager
    def _errors(self) -> Iterator[None]:
        mlflow_exception = importlib.import_module("mlflow.exceptions").MlflowException
        try:
            yield
        except mlflow_exception as exc:
            message = _first_line(exc.message if isinstance(exc.message, str) else str(exc))
            if exc.error_code == _NOT_FOUND:
                raise NotFoundError(f"{self.location}: {message}") from exc
            if isinstance(exc.__cause__ or exc.__context__, OSError):  # requests' errors
                raise RegistryUnavailableError(
                    f"{self.location} is unreachable: {message}"
                ) from exc
            raise RegistryUnavailableError(
                f"{self.location} failed ({exc.error_code}): {message}"
            ) from exc
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors, JSON's ValueErrors
            raise RegistryUnavailableError(
                f"{self.location} is unreachable: {_first_line(str(exc))}"
            ) from exc


def open_registry(settings: Settings) -> MlflowRegistry | None:
    """The registry ``settings`` name; None when ``ABKIT_MLFLOW_TRACKING_URI`` is unset."""
    if not settings.mlflow_tracking_uri:
        return None
    return MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:500] if lines else "no message"
