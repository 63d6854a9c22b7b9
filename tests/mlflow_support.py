"""A real MLflow tracking server for the registry tests: one per test session.

``mlflow server`` (the ``mlflow`` extra, installed by ``make test``) runs with an SQLite backend
store and a local artifact root in a temporary directory, on a free port. A test that needs MLflow
down stops it and starts it again (same port, same store, so what it held is still there).

When MLflow cannot run (not installed, does not start), its tests are skipped with the reason --
unless ``ABKIT_REQUIRE_MLFLOW=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest


def unavailable(message: str) -> None:
    if os.environ.get("ABKIT_REQUIRE_MLFLOW", "") == "1":
        pytest.fail(f"{message} (ABKIT_REQUIRE_MLFLOW=1)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` in its own process group (it starts workers of its own)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "mlflow-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        artifacts = self.directory / "artifacts"
        artifacts.mkdir(exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination", artifacts.as_uri(),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s: {self.tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Wait until the port is free (the workers have gone) before anyone starts it again.
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_server(directory: Path) -> MlflowServer:
    if importlib.util.find_spec("mlflow") is None:
        unavailable("MLflow is not installed (pip install -e '.[mlflow]')")
    server = MlflowServer(directory)
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        unavailable(f"mlflow server could not start: {exc}")
    return server


def register_versions(url: str, count: int) -> str:
    """A new registered model with ``count`` versions (1..count), each from a run of its own
    experiment, as a training pipeline leaves them; its (unique) name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    name = f"ranker-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"training-{name}")
    for _ in range(count):
        run = client.create_run(experiment)
        client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        client.set_terminated(run.info.run_id)
    return name


def aliases(url: str, name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    registered = MlflowClient(tracking_uri=url, registry_uri=url).get_registered_model(name)
    return {str(k): str(v) for k, v in dict(registered.aliases).items()}


def tags(url: str, name: str, version: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=url, registry_uri=url).get_model_version(name, version)
    return {k: v for k, v in dict(found.tags).items() if k.startswith("abkit.")}
