"""Operations: health probes, erasure and retention, the demo and the load generator."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from abkit.cli.base import Context, errors, fail, pass_ctx
from abkit.errors import (
    AbkitError,
    ConflictError,
    ValidationError,
)


@click.group()
def health() -> None:
    """Probes for containers and load balancers: exit 0 when healthy, 1 otherwise."""


@health.command("grpc")
@click.argument("address")
@click.option("--service", default="abkit.v1.AssignmentService", show_default=True)
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False), help="PEM CA for a TLS server.")
def health_grpc(address: str, service: str, ca_file: str | None) -> None:
    """Ask the gRPC health service at ADDRESS whether SERVICE is SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if ca_file:
        with open(ca_file, "rb") as handle:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(handle.read()))
    else:
        channel = grpc.insecure_channel(address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3
        )
    except grpc.RpcError as exc:
        click.echo(f"unhealthy: {exc.code().name} {exc.details()}", err=True)
        sys.exit(1)
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(status)
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)


@health.command("http")
@click.argument("url")
def health_http(url: str) -> None:
    """GET URL (e.g. the results page's /readyz): healthy on a 2xx answer."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        fail(ValidationError("URL", "must start with http:// or https://"))
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 -- checked above
            click.echo(f"HTTP {response.status}")
            sys.exit(0 if 200 <= response.status < 300 else 1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)


@health.command("store")
@pass_ctx
def health_store(ctx: Context) -> None:
    """Healthy when the store answers and its schema is migrated (the worker's probe)."""
    from abkit.store import migrate
    from abkit.store.engine import create_store_engine

    engine = create_store_engine(ctx.settings.database_url)
    try:
        if not migrate.is_up_to_date(engine):
            click.echo("unhealthy: the schema is not at the latest revision", err=True)
            sys.exit(1)
    except Exception as exc:  # noqa: BLE001 -- any failure to answer is "unhealthy"
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()
    click.echo("SERVING")


@health.command("loader")
@pass_ctx
def health_loader(ctx: Context) -> None:
    """Healthy when the loaders keep up: at most ABKIT_LOADER_MAX_LAG messages of the stream
    wait for them."""
    from abkit.infra.loader import LoaderUnknown, read_lag

    with errors():
        if not ctx.settings.stream_url:
            raise ValidationError("ABKIT_STREAM_URL", "the loader's health needs the stream URL")
    try:
        lag = read_lag(ctx.settings)
    except LoaderUnknown as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    bound = ctx.settings.loader_max_lag
    if lag > bound:
        click.echo(f"unhealthy: {lag} messages wait for the loaders (bound {bound})", err=True)
        sys.exit(1)
    click.echo(f"SERVING (lag {lag})")


@click.command("forget")
@click.argument("unit_id")
@pass_ctx
def forget_command(ctx: Context, unit_id: str) -> None:
    """Erase every exposure and event of UNIT_ID (and its pseudonym); audited without the id.

    Rows still on their way (in a server's journal, or the stream) are written after this; run
    it again once they have arrived (seconds, or after an outage).
    """
    with errors(), ctx.open_runtime() as runtime:
        erased = runtime.privacy.forget(unit_id, actor=ctx.settings.actor)
    click.echo(
        f"erased {erased.exposures} exposures and {erased.events} events; "
        f"removed from {erased.overrides} experiment overrides"
    )


@click.command("prune")
@click.option("--older-than", "older_than", required=True, help="A duration such as 180d or 26w.")
@click.option("--include-running", is_flag=True, help="Also prune data of running experiments.")
@pass_ctx
def prune_command(ctx: Context, older_than: str, include_running: bool) -> None:
    """Erase events and exposures older than a retention period (audited)."""
    from datetime import timedelta

    from abkit.core.metrics import parse_duration

    flags = {"older_than": "--older-than"}
    running: dict[type[AbkitError], str] = {
        ConflictError: "pass --include-running to prune them anyway"
    }
    with errors(flags, running):
        seconds = parse_duration(older_than, "--older-than")
        with ctx.open_runtime() as runtime:
            pruned = runtime.privacy.prune(
                timedelta(seconds=seconds),
                actor=ctx.settings.actor,
                include_running=include_running,
            )
    click.echo(
        f"erased {pruned.exposures} exposures and {pruned.events} events older than "
        f"{pruned.cutoff:%Y-%m-%d %H:%M} UTC"
    )


@click.command("loadtest")
@click.argument("target", required=False)
@click.option("--concurrency", default=32, show_default=True, help="Calls in flight.")
@click.option(
    "--duration", default=10.0, show_default=True, help="Seconds (ignored with --requests)."
)
@click.option("--requests", "count", type=int, help="Stop after this many requests.")
@click.option(
    "--rate", type=float, help="Target requests per second (default: as fast as possible)."
)
@click.option("--mode", type=click.Choice(["unary", "batch"]), default="unary", show_default=True)
@click.option("--batch-size", default=100, show_default=True, help="Units per AssignBatch call.")
@click.option("--track-share", default=0.0, show_default=True, help="Share of calls that Track.")
@click.option("--experiment", "experiments", multiple=True, help="Experiment keys to ask for.")
@click.option(
    "--baseline",
    is_flag=True,
    help="Also load an empty-handler server started here, for the ratio.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
def loadtest_command(
    target: str | None,
    concurrency: int,
    duration: float,
    count: int | None,
    rate: float | None,
    mode: str,
    batch_size: int,
    track_share: float,
    experiments: tuple[str, ...],
    baseline: bool,
    json_path: str | None,
) -> None:
    """Load a running abkit gRPC server (TARGET, host:port) and report RPS and latency."""
    import subprocess

    from abkit.tools.loadtest import run_load

    if target is None and not baseline:
        fail(ValidationError("TARGET", "give the server's host:port, or --baseline"))
    kwargs: dict[str, Any] = {
        "concurrency": concurrency,
        "duration": None if count else duration,
        "requests": count,
        "rate": rate,
        "mode": mode,
        "batch_size": batch_size,
        "experiment_keys": list(experiments),
        "track_share": track_share,
        "progress": lambda text: click.echo(text, nl=False, err=True),
    }
    results = []
    if target is not None:
        results.append(run_load(target, **kwargs))
        click.echo("", err=True)
        click.echo(results[-1].line())
    if baseline:
        with subprocess.Popen(
            [sys.executable, "-m", "abkit.tools.loadtest", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
        ) as server:
            announced = server.stdout.readline() if server.stdout is not None else ""
            port = int(announced.rsplit(" ", 1)[1])
            try:
                results.append(run_load(f"127.0.0.1:{port}", **{**kwargs, "experiment_keys": []}))
            finally:
                server.terminate()
        click.echo("", err=True)
        click.echo("baseline (empty handlers) " + results[-1].line())
    if target is not None and baseline:
        click.echo(f"abkit / baseline throughput: {results[0].rps / results[1].rps:.2f}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump([json.loads(r.to_json()) for r in results], handle, indent=2)


@click.command("demo")
@click.option(
    "--scenario",
    type=click.Choice(["promote", "harmful", "aa"]),
    default="promote",
    show_default=True,
    help="promote: v2 is better; harmful: v2 is slower (guardrail); aa: no difference.",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the simulated users.")
@click.option(
    "--database-url",
    "demo_url",
    default="sqlite:///abkit-demo.db",
    show_default=True,
    help="A SQLite file for the demo (recreated).",
)
def demo_command(scenario: str, seed: int, demo_url: str) -> None:
    """Serve an experiment, send simulated users through gRPC, watch the worker decide."""
    from abkit.tools.demo import SCENARIOS, run_demo

    with errors():
        action = run_demo(seed=seed, database_url=demo_url, echo=click.echo, scenario=scenario)
    sys.exit(0 if action == SCENARIOS[scenario].expect else 1)
