"""The serving commands: ``abkit grpc``, ``worker``, ``loader``, ``serve`` (everything in one
process) and ``web``."""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import replace
from typing import Any

import click

from abkit.cli.base import Context, errors, fail, log, pass_ctx, wait_for_signal
from abkit.errors import (
    AbkitError,
    ValidationError,
)


def _run_grpc(
    ctx: Context,
    address: str | None,
    *,
    with_worker: bool = False,
    web_address: str | None = None,
    process: tuple[int, int] = (0, 1),
) -> None:
    """Serve until SIGTERM/SIGINT; ``process`` = (index, count) of ``abkit grpc --processes``."""
    from abkit.infra import telemetry
    from abkit.infra.instruments import WorkerMetrics
    from abkit.rpc.processes import orphan_journals, process_spool, watch_supervisor
    from abkit.rpc.server import build_server
    from abkit.worker import Worker

    index, count = process
    if count > 1:
        watch_supervisor(os.getppid())
    with errors():
        root = ctx.settings.spool_path
        orphans: list[str] = []
        if root is not None:
            if index == 0:
                orphans = orphan_journals(root, count)
            ctx.settings = replace(ctx.settings, spool_dir=process_spool(root, index))
        tel = telemetry.configure(ctx.settings, "abkit" if with_worker else "abkit-grpc")
        runtime = ctx.runtime()
        # Bound (not started) before any thread runs: a busy port fails fast, cleanly.
        web = _bind_web(ctx, runtime, web_address) if web_address is not None else None
        runtime.start()
        runtime.adopt_journals(orphans)
        if not runtime.config.loaded:
            log.warning(
                "experiment config not loaded yet (%s); retrying in the background",
                runtime.config.last_error,
            )
        server = build_server(ctx.settings, runtime, tel, address=address, reuse_port=count > 1)
        server.start()
        worker = loader = None
        if with_worker and ctx.settings.stream_url:
            from abkit.infra.instruments import observe_loader
            from abkit.infra.loader import open_loader

            loader = open_loader(ctx.settings, runtime.store)
            observe_loader(tel.meter(), loader)
        if with_worker:
            worker = Worker(
                runtime.decisions,
                tel.tracer(),
                tick_seconds=ctx.settings.worker_tick_seconds,
                metrics=WorkerMetrics(tel.meter()),
                outbox=runtime.outbox,
            )
            worker.start()
        if web is not None:
            web.start()
    # Everything imported and built so far lives as long as the process: move it out of the
    # cyclic garbage collector's reach, so collections under load walk only request garbage.
    # Request garbage is acyclic and freed by reference counting; collect cycles less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # The journal's and the drain's threads give up the GIL on every fsync and round trip to
    # the database; a short switch interval gets it back to them sooner from the request loop.
    sys.setswitchinterval(ctx.settings.grpc_switch_interval_seconds)
    click.echo(
        f"abkit gRPC ({server.event_loop} event loop) listening on "
        f"{address or ctx.settings.grpc_address} (port {server.port})"
    )
    if web is not None:
        click.echo(f"abkit results page at {web.url}")
    wait_for_signal()
    if web is not None:
        web.stop()
    server.stop()
    if worker is not None:
        worker.stop()
    if loader is not None:  # before the store closes; the rest waits in the stream
        loader.close(ctx.settings.grpc_grace_seconds)
    clean = runtime.close(ctx.settings.grpc_grace_seconds)
    tel.shutdown()
    sys.exit(0 if clean else 1)


def _bind_web(ctx: Context, runtime: Any, address: str) -> Any:
    """The results page for a thread of this process, sharing its runtime (``abkit serve``)."""
    from abkit.web import create_app
    from abkit.web.server import WebServer

    try:
        return WebServer(create_app(ctx.settings, runtime), address)
    except OSError as exc:
        raise ValidationError("ABKIT_WEB_ADDRESS", f"cannot listen on {address}: {exc}") from exc


def _run_worker(ctx: Context) -> None:
    from abkit.infra import telemetry
    from abkit.infra.instruments import WorkerMetrics
    from abkit.worker import Worker

    with errors():
        tel = telemetry.configure(ctx.settings, "abkit-worker")
        runtime = ctx.runtime()
        worker = Worker(
            runtime.decisions,
            tel.tracer(),
            tick_seconds=ctx.settings.worker_tick_seconds,
            metrics=WorkerMetrics(tel.meter()),
            outbox=runtime.outbox,
        )
        worker.start()
    click.echo("abkit worker running")
    wait_for_signal()
    worker.stop()
    runtime.close()
    tel.shutdown()


def _run_loader(ctx: Context) -> None:
    from abkit.infra import telemetry
    from abkit.infra.instruments import observe_loader
    from abkit.infra.loader import open_loader
    from abkit.store.sql import SqlStore

    with errors():
        if not ctx.settings.stream_url:
            raise ValidationError(
                "ABKIT_STREAM_URL", "abkit loader copies the stream: set it (nats://host:4222)"
            )
        tel = telemetry.configure(ctx.settings, "abkit-loader")
        store = SqlStore.from_url(ctx.settings.database_url)
        loader = open_loader(ctx.settings, store)
        observe_loader(tel.meter(), loader)
    click.echo(
        f"abkit loader: {ctx.settings.stream_name} at {ctx.settings.stream_url} -> the store "
        f"(consumer {ctx.settings.loader_durable})"
    )
    wait_for_signal()
    clean = loader.close(ctx.settings.grpc_grace_seconds)
    store.close()
    tel.shutdown()
    sys.exit(0 if clean else 1)


@click.command("loader")
@pass_ctx
def loader_command(ctx: Context) -> None:
    """Copy the stream (ABKIT_STREAM_URL) into the store; run as many as the load needs.

    Rows are acknowledged to the stream only once committed; bad messages go to the
    dead-letter subject. Stops gracefully on SIGTERM/SIGINT (the batch in hand is finished).
    """
    _run_loader(ctx)


@click.command("worker")
@pass_ctx
def worker_command(ctx: Context) -> None:
    """Look at running experiments on their interval; promote, roll back or stop them."""
    _run_worker(ctx)


@click.command("grpc")
@click.option("--address", help="host:port to listen on (overrides ABKIT_GRPC_ADDRESS).")
@click.option(
    "--processes",
    type=int,
    help="Server processes sharing the port, one per core (overrides ABKIT_GRPC_PROCESSES).",
)
@click.option("--process-index", hidden=True, help="I/N: run as process I of N (internal).")
@pass_ctx
def grpc_command(
    ctx: Context, address: str | None, processes: int | None, process_index: str | None
) -> None:
    """Run the gRPC assignment service (stops gracefully on SIGTERM/SIGINT).

    With --processes N (Linux), N server processes share the port; this process supervises them.
    """
    with errors():
        if processes is not None:
            try:  # Settings checks the bounds; the error names the flag the user gave
                ctx.settings = replace(ctx.settings, grpc_processes=processes)
            except ValidationError as exc:
                raise ValidationError("--processes", exc.message) from None
        if process_index is not None:
            index, _, count = process_index.partition("/")
            if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
                raise ValidationError("--process-index", f"expected I/N, got {process_index!r}")
            _run_grpc(ctx, address, process=(int(index), int(count)))
            return
        if ctx.settings.grpc_processes == 1:
            _run_grpc(ctx, address)
            return
        if ctx.settings.metrics_port:
            raise ValidationError(
                "ABKIT_METRICS_PORT",
                "a Prometheus endpoint serves one process; with ABKIT_GRPC_PROCESSES > 1 export "
                "metrics over OTLP (OTEL_METRICS_EXPORTER=otlp): each process reports as its own "
                "service.instance.id",
            )
    _supervise(ctx, address or ctx.settings.grpc_address)


def _supervise(ctx: Context, address: str) -> None:
    from abkit.rpc.processes import StartupFailed, Supervisor, child_environment

    count = ctx.settings.grpc_processes
    try:
        supervisor = Supervisor(
            count, address, env=child_environment(ctx.settings.database_url), verbose=ctx.verbose
        )
    except OSError as exc:
        fail(AbkitError(str(exc)))
    try:
        supervisor.start()
    except StartupFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    click.echo(
        f"abkit gRPC listening on {supervisor.address} (port {supervisor.port}, {count} processes)"
    )
    sys.exit(supervisor.wait())


@click.command("serve")
@click.option("--address", help="gRPC host:port (overrides ABKIT_GRPC_ADDRESS).")
@click.option(
    "--web-address", help="Results page host:port (overrides ABKIT_WEB_ADDRESS; 'off': none)."
)
@pass_ctx
def serve_command(ctx: Context, address: str | None, web_address: str | None) -> None:
    """Everything in one process on the configured store (embedded SQLite by default).

    Migrates the schema first, then serves gRPC, runs the decision worker and serves the
    results page (on ABKIT_WEB_ADDRESS, default 127.0.0.1:8000).
    """
    from abkit.store import migrate
    from abkit.store.engine import create_store_engine

    with errors():
        engine = create_store_engine(ctx.settings.database_url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
    web = web_address or ctx.settings.web_address
    _run_grpc(ctx, address, with_worker=True, web_address=None if web == "off" else web)


@click.command("web")
@click.option("--address", help="host:port to listen on (overrides ABKIT_WEB_ADDRESS).")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="gunicorn worker processes (default: $WEB_CONCURRENCY, else 1).",
)
@click.option("--dev", is_flag=True, help="Werkzeug's development server instead of gunicorn.")
@pass_ctx
def web_command(ctx: Context, address: str | None, workers: int | None, dev: bool) -> None:
    """Serve the results pages and the JSON/CSV API (gunicorn; --dev: development server).

    The same app for a gunicorn you run yourself: gunicorn 'abkit.web:create_app()'.
    """
    from abkit.web import create_app
    from abkit.web.server import parse_address, run_gunicorn

    settings = ctx.settings
    address = address or settings.web_address
    if not dev:
        with errors():
            parse_address(address)
        # Each worker process builds its own app (and database pool) after the fork.
        run_gunicorn(lambda: create_app(settings), address, workers)
        return
    with errors():
        runtime = ctx.runtime()
        server = _bind_web(ctx, runtime, address)
        server.start()
    click.echo(f"abkit results page at {server.url} (development server)")
    wait_for_signal()
    server.stop()
    runtime.close()
