"""docker-compose.yml, checked without a Docker engine.

The file is validated against the Compose Specification schema, then every abkit service's
command -- exactly as the compose file states it, run by the image's entrypoint ``abkit`` -- is
started as a local process against the CI PostgreSQL, and the service's own healthcheck command
must pass. The collector is stood in for by a local OTLP/HTTP receiver that decodes what the
real OTLP exporters send.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import sqlalchemy as sa
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from abkit.infra.stream import StreamSettings
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# The Compose Specification's JSON schema (compose-spec/compose-spec, Apache-2.0), copied from
# ../shared/schemas so the test runs in any checkout; when ../shared is there, the copy must match.
SHARED_SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
SCHEMA_COPY = ROOT / "tests" / "fixtures" / "compose" / "compose-spec.json"
SCHEMA = json.loads(SCHEMA_COPY.read_text())
ABKIT_SERVICES = ("migrate", "grpc", "worker", "web", "loader")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_compose_file_follows_the_compose_specification() -> None:
    if SHARED_SCHEMA.exists():
        assert json.loads(SHARED_SCHEMA.read_text()) == SCHEMA, "refresh tests/fixtures/compose"
    jsonschema.Draft7Validator(SCHEMA).validate(COMPOSE)
    services = COMPOSE["services"]
    assert {"postgres", "migrate", "grpc", "worker", "web", "otel-collector", "jaeger"} <= set(
        services
    )
    for name in ("grpc", "worker", "web"):
        assert services[name]["restart"] == "unless-stopped"
        assert "healthcheck" in services[name]
    assert "ports" not in services["grpc"]  # scalable: replicas sit behind grpc-lb
    assert services["postgres"]["healthcheck"] and services["postgres"]["volumes"]
    # Stream mode is a profile: NATS with JetStream on a volume, and the loaders.
    assert services["nats"]["profiles"] == services["loader"]["profiles"] == ["stream"]
    assert "-js" in services["nats"]["command"] and services["nats"]["volumes"]
    assert services["loader"]["command"] == ["loader"]
    assert services["loader"]["healthcheck"]["test"] == ["CMD", "abkit", "health", "loader"]
    assert services["grpc"]["environment"]["ABKIT_STREAM_URL"] == "${ABKIT_STREAM_URL:-}"


class Collector:
    """A local OTLP/HTTP receiver: keeps every decoded trace and metric export."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (service.name, span name)
        self.metrics: set[tuple[str, str]] = set()  # (service.name, metric name)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    for rs in request.resource_spans:
                        service = _service(rs.resource)
                        collector.spans += [
                            (service, span.name) for ss in rs.scope_spans for span in ss.spans
                        ]
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    for rm in request.resource_metrics:
                        service = _service(rm.resource)
                        collector.metrics |= {
                            (service, m.name) for sm in rm.scope_metrics for m in sm.metrics
                        }
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _service(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value)
    return ""


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def _environment(service: str, overrides: dict[str, str]) -> dict[str, str]:
    declared = {k: str(v) for k, v in COMPOSE["services"][service].get("environment", {}).items()}
    # ${VAR:-default} interpolation, as compose does it, for the variables this file uses.
    declared = {k: "" if v.startswith("${") else v for k, v in declared.items()}
    return {
        **os.environ,
        **declared,
        **{
            k: v
            for k, v in overrides.items()
            if k in declared or k.startswith(("ABKIT_SPOOL", "ABKIT_STREAM_", "ABKIT_LOADER_"))
        },
    }


def _local(command: list[str], replacements: dict[str, str]) -> list[str]:
    """The container command, run here: the image's entrypoint is `abkit`."""
    args = [replacements.get(arg, arg) for arg in command]
    if args[:1] == ["abkit"]:
        args = args[1:]
    return [sys.executable, "-m", "abkit", *args]


def _wait_healthy(
    service: str, env: dict[str, str], replacements: dict[str, str], timeout: float = 60
) -> None:
    test = COMPOSE["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = _local(test[1:], replacements)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        if last.returncode == 0:
            return
        time.sleep(0.5)
    output = f"{last.stdout} {last.stderr}" if last else ""
    raise AssertionError(f"{service} never became healthy: {output}")


def test_each_service_command_runs_and_becomes_healthy(
    pg_url: str, collector: Collector, tmp_path: Path
) -> None:
    grpc_port, web_port = free_port(), free_port()
    overrides = {
        "ABKIT_DATABASE_URL": pg_url,
        "ABKIT_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "ABKIT_WEB_ADDRESS": f"127.0.0.1:{web_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
    }
    replacements = {
        "127.0.0.1:50051": f"127.0.0.1:{grpc_port}",
        "http://127.0.0.1:8000/readyz": f"http://127.0.0.1:{web_port}/readyz",
    }
    # migrate: a one-shot command that must succeed (twice: it is safe to re-run).
    env = _environment("migrate", overrides)
    for _ in range(2):
        done = subprocess.run(
            _local(COMPOSE["services"]["migrate"]["command"], replacements),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
    example = "examples/ranker-experiment.yaml"
    apply = subprocess.run(
        [sys.executable, "-m", "abkit", "experiment", "apply", "-f", example, "--start"],
        env={**os.environ, "ABKIT_DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert apply.returncode == 0, apply.stderr
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for service in ("grpc", "worker", "web"):
            env = _environment(service, {**overrides, "ABKIT_SPOOL_DIR": str(tmp_path / service)})
            processes[service] = subprocess.Popen(
                _local(COMPOSE["services"][service]["command"], replacements),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
        for service in ("grpc", "worker", "web"):
            _wait_healthy(service, _environment(service, overrides), replacements)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            attrs = {"platform": pb.AttributeValue(string_value="web")}
            for i in range(20):
                stub.Assign(pb.AssignRequest(unit_id=f"u{i}", attributes=attrs), timeout=5)
    finally:
        _stop_all(processes)
    # The real OTLP exporters flushed on shutdown: spans and metrics reached the "collector".
    assert ("abkit-grpc", "abkit.v1.AssignmentService/Assign") in collector.spans
    assert ("abkit-grpc", "abkit.assignments") in collector.metrics
    assert ("abkit-grpc", "rpc.server.duration") in collector.metrics


def test_stream_mode_services_run_and_become_healthy(
    pg_url: str, collector: Collector, tmp_path: Path, stream_settings: StreamSettings
) -> None:
    """``--profile stream``: grpc publishes to JetStream, the loader fills PostgreSQL, and both
    pass their healthchecks (NATS is the shared server, with a stream of this test's own)."""
    from tests.nats_support import stream_env

    grpc_port = free_port()
    overrides = {
        "ABKIT_DATABASE_URL": pg_url,
        "ABKIT_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        **stream_env(stream_settings),
    }
    replacements = {"127.0.0.1:50051": f"127.0.0.1:{grpc_port}"}
    done = subprocess.run(
        _local(COMPOSE["services"]["migrate"]["command"], replacements),
        env=_environment("migrate", overrides), capture_output=True, text=True, timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    apply = subprocess.run(
        [sys.executable, "-m", "abkit", "experiment", "apply", "-f",
         "examples/ranker-experiment.yaml", "--start"],
        env={**os.environ, "ABKIT_DATABASE_URL": pg_url}, capture_output=True, text=True,
        timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert apply.returncode == 0, apply.stderr
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for service in ("grpc", "loader"):
            env = _environment(service, {**overrides, "ABKIT_SPOOL_DIR": str(tmp_path / service)})
            processes[service] = subprocess.Popen(
                _local(COMPOSE["services"][service]["command"], replacements),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
        _wait_healthy("grpc", _environment("grpc", overrides), replacements)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            attrs = {"platform": pb.AttributeValue(string_value="web")}
            units = []
            for i in range(200):
                reply = stub.Assign(pb.AssignRequest(unit_id=f"s{i}", attributes=attrs), timeout=5)
                units += [f"s{i}"] * any(a.in_experiment for a in reply.assignments)
        assert units
        _wait_healthy("loader", _environment("loader", overrides), replacements)
        engine = sa.create_engine(pg_url)
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline and count < len(units):
            with engine.connect() as conn:
                count = conn.execute(sa.text("SELECT count(*) FROM exposures")).scalar_one()
            time.sleep(0.2)
        engine.dispose()
        assert count == len(units)  # in the stream first, then loaded into PostgreSQL
    finally:
        _stop_all(processes)
    assert ("abkit-loader", "abkit.loader.lag") in collector.metrics
    assert ("abkit-loader", "abkit.loader.rows") in collector.metrics
    assert ("abkit-grpc", "abkit.records.published") in collector.metrics


def _stop_all(processes: dict[str, subprocess.Popen[str]]) -> None:
    """SIGTERM to every service, then each must exit 0 (graceful stop)."""
    for proc in processes.values():
        proc.send_signal(signal.SIGTERM)
    for service, proc in processes.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{service}: {err}"
