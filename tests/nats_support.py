"""NATS servers for the stream tests: the shared JetStream server and servers of their own.

The shared server (``ABKIT_TEST_NATS_URL``, default ``nats://127.0.0.1:4222``) is only ever
given streams of unique names and subjects, deleted afterwards. A test that must kill a server
starts its own ``nats-server`` processes (:class:`NatsServer`, :class:`NatsCluster`: three of
them make a JetStream cluster), each in a temporary directory on free ports.

When NATS cannot be used, its tests are skipped with the reason -- unless
``ABKIT_REQUIRE_NATS=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from abkit.infra.stream import StreamSettings

SHARED_URL = os.environ.get("ABKIT_TEST_NATS_URL", "nats://127.0.0.1:4222")


def unavailable(message: str) -> None:
    if os.environ.get("ABKIT_REQUIRE_NATS", "") == "1":
        pytest.fail(f"{message} (ABKIT_REQUIRE_NATS=1)")
    pytest.skip(message)


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _jetstream_ready(url: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def wait_jetstream(url: str, timeout: float = 30.0) -> None:
    """Until JetStream answers at ``url`` (in a cluster: a meta leader is elected)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            run(_jetstream_ready(url))
            return
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"JetStream at {url} never answered: {last}")


def unique_stream(servers: Sequence[str], replicas: int = 1) -> StreamSettings:
    """Settings of a stream nobody else uses: its own name and subjects."""
    tag = uuid.uuid4().hex[:10]
    return StreamSettings(
        servers=tuple(servers),
        name=f"ABKIT_TEST_{tag.upper()}",
        prefix=f"abkit-test-{tag}",
        replicas=replicas,
    )


def stream_env(settings: StreamSettings) -> dict[str, str]:
    """The ``ABKIT_*`` variables of a process that uses ``settings``' stream."""
    return {
        "ABKIT_STREAM_URL": ",".join(settings.servers),
        "ABKIT_STREAM_NAME": settings.name,
        "ABKIT_STREAM_SUBJECT_PREFIX": settings.prefix,
        "ABKIT_STREAM_REPLICAS": str(settings.replicas),
        "ABKIT_LOADER_DURABLE": f"loader-{settings.prefix}",
    }


async def _delete_stream(settings: StreamSettings) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(list(settings.servers), connect_timeout=2)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(settings.name)
    finally:
        await nc.close()


def delete_stream(settings: StreamSettings) -> None:
    run(_delete_stream(settings))


async def _messages(settings: StreamSettings, subject: str) -> list[Any]:
    """Every message of ``subject`` in the stream, in stream order (an ordered consumer)."""
    import nats

    nc = await nats.connect(list(settings.servers), connect_timeout=2)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.name, subjects_filter=subject)
        wanted = sum((info.state.subjects or {}).values())
        subscription = await js.subscribe(subject, stream=settings.name, ordered_consumer=True)
        found = []
        while len(found) < wanted:
            found.append(await subscription.next_msg(timeout=10))
        await subscription.unsubscribe()
        return found
    finally:
        await nc.close()


def messages(settings: StreamSettings, subject: str) -> list[Any]:
    return list(run(_messages(settings, subject)))


class NatsServer:
    """One ``nats-server`` with JetStream, in ``directory``, optionally routed to peers."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        port: int | None = None,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        self.binary = nats_server_binary()
        self.directory = directory
        self.name = name
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{directory / "js"}" }}',
        ]
        if cluster_port is not None:
            route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
            lines.append(
                f"cluster {{ name: abkit-test, listen: 127.0.0.1:{cluster_port}, "
                f"routes: [{route_urls}] }}"
            )
        self.config = directory / "nats.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 -- the process keeps it
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"nats-server {self.name} did not start: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or peers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def log(self) -> str:
        path = self.directory / "nats.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class NatsCluster:
    """Three routed ``nats-server`` processes: a JetStream cluster (R3 streams survive one
    node's loss)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                directory / f"n{i}",
                f"n{i}",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]
        self.urls = [n.url for n in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_jetstream(node.url, timeout=60)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)
