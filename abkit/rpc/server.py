"""``build_server()``: the gRPC server with the assignment, health and reflection services."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from abkit.config import Settings
from abkit.errors import ValidationError
from abkit.infra.instruments import RpcMetrics, observe_runtime
from abkit.infra.telemetry import Telemetry
from abkit.rpc.auth import TokenInterceptor
from abkit.rpc.config_feed import ConfigFeed
from abkit.rpc.servicer import AssignmentServicer, add_to_server
from abkit.runtime import Runtime
from abkit.v1 import assignment_pb2

log = logging.getLogger(__name__)

STREAM_SPARE_THREADS = 4
"""Threads of the config streams' pool beyond ``config_streams``: a stream over the limit
needs one to be refused (RESOURCE_EXHAUSTED) rather than wait for a stream to end."""

SERVICE_NAME = assignment_pb2.DESCRIPTOR.services_by_name["AssignmentService"].full_name
STORE_HEALTH = "abkit.v1.Store"
"""Health entry of the store behind the server: NOT_SERVING while writes are spooled or the
config cannot be refreshed. Assign keeps answering from the cached config meanwhile, so the
service's own entry stays SERVING (a load balancer must not drop a replica that still works)."""


class GrpcServer:
    """An unstarted server bound to ``port``; ``start()``, then ``stop()`` (graceful)."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        runtime: Runtime,
        health_servicer: health.HealthServicer,
        feed: ConfigFeed,
        pools: tuple[futures.ThreadPoolExecutor, ...] = (),
    ) -> None:
        self.server = server
        self._pools = pools
        self.feed = feed
        self.port = port
        self.runtime = runtime
        self.health = health_servicer
        self._ready = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()
        self._watcher = threading.Thread(
            target=self._watch_config, name="abkit-health", daemon=True
        )
        self._watcher.start()

    def _watch_config(self) -> None:
        # NOT_SERVING until the experiment config is loaded: a load balancer must not route
        # Assign calls to a replica that would answer "unknown experiment".
        while not self.runtime.config.loaded:
            if self._ready.wait(0.1):
                return
        self._set_serving(True)
        while not self._ready.wait(0.5):
            self.health.set(
                STORE_HEALTH,
                health_pb2.HealthCheckResponse.NOT_SERVING
                if self.runtime.degraded
                else health_pb2.HealthCheckResponse.SERVING,
            )

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` seconds."""
        self._ready.set()
        self._set_serving(False)
        self.feed.close()  # config streams never finish on their own
        self.server.stop(
            grace if grace is not None else self.runtime.settings.grpc_grace_seconds
        ).wait()
        for pool in self._pools:  # their threads end rather than linger after the server
            pool.shutdown(wait=False)

    def wait(self) -> None:
        self.server.wait_for_termination()


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
    meter = telemetry.meter()
    rpc_metrics = RpcMetrics(meter) if telemetry.records_metrics else None
    observe_runtime(meter, runtime)
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.api_token:
        interceptors.append(
            TokenInterceptor(settings.api_token, protect_assign=settings.api_token_for_assign)
        )
    # Unary calls get grpc_workers threads. Each config stream holds a thread for as long as it
    # lasts, so streams run in a pool of their own (grpcio's per-method pool), with a few threads
    # spare to refuse the streams beyond config_streams at once: sharing one pool, idle streams
    # would let unary calls grow the running threads past grpc_workers (measured: 2-16 % fewer
    # new-unit Assign calls/s with a pool of workers + streams than with workers alone).
    calls = futures.ThreadPoolExecutor(
        max_workers=settings.grpc_workers, thread_name_prefix="abkit-grpc"
    )
    streams = futures.ThreadPoolExecutor(
        max_workers=settings.config_streams + STREAM_SPARE_THREADS,
        thread_name_prefix="abkit-config",
    )
    server = grpc.server(
        calls,
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    feed = ConfigFeed(
        max_streams=settings.config_streams, heartbeat_seconds=settings.config_heartbeat_seconds
    )
    runtime.config.subscribe(feed.publish)
    add_to_server(
        AssignmentServicer(
            runtime.assignment,
            telemetry.tracer(),
            rpc_metrics,
            records_spans=telemetry.records_spans,
            feed=feed,
        ),
        server,
        stream_pool=streams,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(STORE_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    target = address or settings.grpc_address
    credentials = server_credentials(settings)
    port = (
        server.add_secure_port(target, credentials)
        if credentials is not None
        else server.add_insecure_port(target)
    )
    if port == 0:
        raise OSError(f"could not bind the gRPC server to {address or settings.grpc_address}")
    return GrpcServer(server, port, runtime, health_servicer, feed, (calls, streams))
