"""``build_server()``: the gRPC server with the assignment, health and reflection services."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as aio_health
from grpc_reflection.v1alpha import reflection

from abkit.config import Settings
from abkit.errors import ValidationError
from abkit.infra.instruments import RpcMetrics, observe_runtime
from abkit.infra.telemetry import Telemetry
from abkit.rpc import loops
from abkit.rpc.auth import TokenInterceptor
from abkit.rpc.config_feed import ConfigFeed
from abkit.rpc.servicer import AssignmentServicer, add_to_server
from abkit.runtime import Runtime
from abkit.v1 import assignment_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = assignment_pb2.DESCRIPTOR.services_by_name["AssignmentService"].full_name
STORE_HEALTH = "abkit.v1.Store"
"""Health entry of the store behind the server: NOT_SERVING while writes are spooled or the
config cannot be refreshed. Assign keeps answering from the cached config meanwhile, so the
service's own entry stays SERVING (a load balancer must not drop a replica that still works)."""


class GrpcServer:
    """An unstarted ``grpc.aio`` server bound to ``port``; ``start()``, then ``stop()``
    (graceful). Its event loop runs in a thread of its own from :func:`build_server` on, so
    callers (the CLI, tests, the demo) keep a synchronous API."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: grpc.aio.Server,
        port: int,
        runtime: Runtime,
        health_servicer: aio_health.HealthServicer,
        feed: ConfigFeed,
    ) -> None:
        self._loop = loop
        self._thread = thread
        self.server = server
        self.feed = feed
        self.port = port
        self.runtime = runtime
        self.health = health_servicer
        self._ready = asyncio.Event()  # used on the loop only
        self._watcher: asyncio.Task[None] | None = None
        self._stopped = threading.Event()

    @property
    def event_loop(self) -> str:
        """The loop the server runs on: ``uvloop`` or ``asyncio`` (``ABKIT_GRPC_EVENT_LOOP``)."""
        return type(self._loop).__module__.split(".")[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        loops.run(self._loop, self._start())

    async def _start(self) -> None:
        await self.server.start()
        self._watcher = asyncio.ensure_future(self._watch_config())

    async def _watch_config(self) -> None:
        # NOT_SERVING until the experiment config is loaded: a load balancer must not route
        # Assign calls to a replica that would answer "unknown experiment".
        while not self.runtime.config.loaded:
            if await _wait(self._ready, 0.1):
                return
        await self._set_serving(True)
        while not await _wait(self._ready, 0.5):
            await self.health.set(
                STORE_HEALTH,
                health_pb2.HealthCheckResponse.NOT_SERVING
                if self.runtime.degraded
                else health_pb2.HealthCheckResponse.SERVING,
            )

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` seconds; then end the
        loop's thread."""
        if self._stopped.is_set():
            return
        grace = grace if grace is not None else self.runtime.settings.grpc_grace_seconds
        try:
            loops.run(self._loop, self._stop(grace))
        finally:
            loops.end(self._loop, self._thread)
            self._stopped.set()

    async def _stop(self, grace: float) -> None:
        self._ready.set()
        if self._watcher is not None:
            await self._watcher
        await self._set_serving(False)
        self.feed.close()  # config streams never finish on their own
        await self.server.stop(grace)

    def wait(self) -> None:
        """Block until :meth:`stop` has ended the server."""
        self._stopped.wait()


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def _read_pem(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(variable, f"cannot read {path}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from ``ABKIT_TLS_CERT``/``ABKIT_TLS_KEY``; mutual TLS with ``ABKIT_TLS_CLIENT_CA``."""
    if not settings.tls_cert:
        return None
    chain = _read_pem(settings.tls_cert, "ABKIT_TLS_CERT")
    key = _read_pem(settings.tls_key, "ABKIT_TLS_KEY")
    client_ca = (
        _read_pem(settings.tls_client_ca, "ABKIT_TLS_CLIENT_CA") if settings.tls_client_ca else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def build_server(
    settings: Settings,
    runtime: Runtime,
    telemetry: Telemetry,
    *,
    address: str | None = None,
    reuse_port: bool = False,
) -> GrpcServer:
    """Build (not start) the server. ``address="127.0.0.1:0"`` picks a free port (tests).

    ``reuse_port`` lets the processes of ``abkit grpc --processes N`` share the port. Otherwise
    it is off (grpcio turns it on by default on Linux): a second server on a busy port must
    fail, not quietly take half of another server's connections.
    """
    loop, thread = loops.start(settings.grpc_event_loop)
    try:
        return loops.run(
            loop, _build(settings, runtime, telemetry, loop, thread, address, reuse_port)
        )
    except BaseException:
        loops.end(loop, thread)
        raise


async def _build(
    settings: Settings,
    runtime: Runtime,
    telemetry: Telemetry,
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    address: str | None,
    reuse_port: bool,
) -> GrpcServer:
    """On the server's loop: grpc.aio binds its objects to the loop they are made on."""
    meter = telemetry.meter()
    rpc_metrics = RpcMetrics(meter) if telemetry.records_metrics else None
    observe_runtime(meter, runtime)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.api_token:
        interceptors.append(
            TokenInterceptor(settings.api_token, protect_assign=settings.api_token_for_assign)
        )
    # Every handler is a coroutine on this one loop: the Python work of a call holds the GIL
    # whatever thread runs it, so threads would only add hand-offs (BENCHMARKS.md, gRPC).
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    feed = ConfigFeed(
        max_streams=settings.config_streams, heartbeat_seconds=settings.config_heartbeat_seconds
    )
    servicer = AssignmentServicer(
        runtime.assignment,
        telemetry.tracer(),
        rpc_metrics,
        records_spans=telemetry.records_spans,
        feed=feed,
    )
    servicer.bind(loop)
    runtime.config.subscribe(feed.publish)
    add_to_server(servicer, server)
    health_servicer = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(STORE_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    target = address or settings.grpc_address
    credentials = server_credentials(settings)
    try:
        port = (
            server.add_secure_port(target, credentials)
            if credentials is not None
            else server.add_insecure_port(target)
        )
    except RuntimeError:  # grpc.aio raises where the synchronous server returned 0
        port = 0
    if port == 0:
        raise OSError(f"could not bind the gRPC server to {address or settings.grpc_address}")
    return GrpcServer(loop, thread, server, port, runtime, health_servicer, feed)
