"""The ``abkit`` command.

Exit codes, for pipelines: 0 success; 1 unexpected failure; 2 invalid input (bad file, bad
argument); 3 not found; 4 refused by the current state (e.g. changing a running experiment);
5 store unreachable.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import click

from abkit import __version__
from abkit.config import Settings
from abkit.core.spec import experiment_to_dict
from abkit.errors import (
    AbkitError,
    ConflictError,
    NotFoundError,
    SchemaOutOfDateError,
    StoreUnavailableError,
    ValidationError,
)

if TYPE_CHECKING:
    from abkit.ports import ExperimentRecord
    from abkit.runtime import Runtime

EXIT_CODES: tuple[tuple[type[AbkitError], int], ...] = (
    (ValidationError, 2),
    (NotFoundError, 3),
    (ConflictError, 4),
    (StoreUnavailableError, 5),
)

log = logging.getLogger("abkit")


REMEDIES: tuple[tuple[type[AbkitError], str], ...] = (
    (SchemaOutOfDateError, "run `abkit db upgrade`"),
    (NotFoundError, "`abkit experiment list` shows the experiments"),
)
"""What to type about an error, added here: inner layers name the problem in abkit's terms, the
command line names the command."""


def _fail(exc: AbkitError, flags: Mapping[str, str] | None = None, hint: str = "") -> NoReturn:
    """Print ``exc`` with the command's own words for it, and exit with its code.

    ``flags`` renames a :class:`ValidationError`'s field to the option the user typed
    (``older_than`` -> ``--older-than``); ``hint`` (or the general remedy for the error's kind)
    is appended.
    """
    message = str(exc)
    if isinstance(exc, ValidationError) and flags and exc.field in flags:
        message = f"{flags[exc.field]}: {exc.message}"
    remedy = hint or next((r for kind, r in REMEDIES if isinstance(exc, kind)), "")
    click.echo(f"error: {message}" + (f"; {remedy}" if remedy else ""), err=True)
    code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)
    sys.exit(code)


@contextmanager
def _errors(
    flags: Mapping[str, str] | None = None,
    hints: Mapping[type[AbkitError], str] | None = None,
) -> Iterator[None]:
    """Translate abkit's errors at the edge: message, remedy, exit code (see :func:`_fail`)."""
    try:
        yield
    except AbkitError as exc:
        hint = next((h for kind, h in (hints or {}).items() if isinstance(exc, kind)), "")
        _fail(exc, flags, hint)


class Context:
    """Lazily built pieces shared by the subcommands."""

    def __init__(self, settings: Settings, *, verbose: bool = False) -> None:
        self.settings = settings
        self.verbose = verbose

    def runtime(self) -> Any:
        """A runtime for a server command, which starts and closes it itself."""
        from abkit.runtime import Runtime

        return Runtime.from_settings(self.settings)

    def open_runtime(self) -> AbstractContextManager[Runtime]:
        """A runtime for one command, always closed when the command ends."""
        from abkit.runtime import open_runtime

        return open_runtime(self.settings)


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.version_option(__version__, prog_name="abkit")
@click.option(
    "--database-url",
    metavar="URL",
    help="Store URL (overrides ABKIT_DATABASE_URL; default sqlite:///abkit.db).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(click_ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """abkit: A/B tests of ML model versions, from assignment to automatic promotion."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with _errors():
        settings = Settings.from_env()
        if database_url:
            settings = Settings(**{**_asdict(settings), "database_url": database_url})
    click_ctx.obj = Context(settings, verbose=verbose)


def _asdict(settings: Settings) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


# -- db ----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(ctx: Context, revision: str) -> None:
    """Create or migrate the schema (safe to run repeatedly)."""
    from abkit.store import migrate
    from abkit.store.engine import create_store_engine

    with _errors():
        engine = create_store_engine(ctx.settings.database_url)
        try:
            migrate.upgrade(engine, revision)
            click.echo(f"database at revision {migrate.current_revision(engine)}")
        except Exception as exc:
            raise StoreUnavailableError(f"migration failed: {exc}") from exc
        finally:
            engine.dispose()


# -- experiment --------------------------------------------------------------------------------


@main.group()
def experiment() -> None:
    """Declare, inspect, start and pause experiments."""


@experiment.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Experiment YAML/JSON file.",
)
@click.option("--start", is_flag=True, help="Start it (a new or draft experiment) right away.")
@pass_ctx
def experiment_apply(ctx: Context, path: str, start: bool) -> None:
    """Create or update an experiment from a file (idempotent)."""
    from abkit.specfile import load_experiment_file

    with _errors():
        spec = load_experiment_file(path)
        with ctx.open_runtime() as runtime:
            result = runtime.experiments.apply(
                spec.experiment, actor=ctx.settings.actor, policy=spec.policy, start=start
            )
    exp = result.record.experiment
    detail = f" ({', '.join(result.changed)})" if result.changed else ""
    click.echo(
        f"experiment {exp.key} {result.outcome}{detail}; "
        f"status {exp.status}, revision {result.record.revision}"
    )


@experiment.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_ctx
def experiment_list(ctx: Context, fmt: str) -> None:
    """All experiments with their status and units per arm."""
    with _errors(), ctx.open_runtime() as runtime:
        records = runtime.experiments.list()
        counts = {r.key: runtime.experiments.exposure_counts(r.key) for r in records}
    if fmt == "json":
        click.echo(json.dumps([_record_json(r, counts[r.key]) for r in records], indent=2))
        return
    if not records:
        click.echo("no experiments yet: abkit experiment apply -f FILE.yaml")
        return
    rows = [("KEY", "STATUS", "MODEL", "ARMS (version, weight, units)")]
    for r in records:
        e = r.experiment
        arms = ", ".join(
            f"{a.key}={a.model_version} {a.weight:g} n={counts[r.key].get(a.key, 0)}"
            for a in e.arms
        )
        rows.append((e.key, str(e.status), e.model, arms))
    _print_table(rows)


@experiment.command("show")
@click.argument("key")
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
@pass_ctx
def experiment_show(ctx: Context, key: str, fmt: str) -> None:
    """One experiment: its config, status and units per arm."""
    import yaml

    with _errors(), ctx.open_runtime() as runtime:
        record = runtime.experiments.get(key)
        counts = runtime.experiments.exposure_counts(key)
    doc = _record_json(record, counts)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())


def _status_command(name: str, verb: str) -> Callable[..., None]:
    @experiment.command(name)
    @click.argument("key")
    @pass_ctx
    def command(ctx: Context, key: str) -> None:
        with _errors(), ctx.open_runtime() as runtime:
            record = getattr(runtime.experiments, verb)(key, actor=ctx.settings.actor)
        click.echo(f"experiment {key} is {record.experiment.status}")

    command.__doc__ = {
        "start": "Start a draft experiment (or resume a paused one).",
        "pause": "Pause: everyone gets control, nothing is logged; resume with start.",
        "resume": "Resume a paused experiment.",
    }[name]
    return command


@experiment.command("promote")
@click.argument("key")
@click.argument("arm")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@pass_ctx
def experiment_promote(ctx: Context, key: str, arm: str, reason: str) -> None:
    """Promote ARM now: everyone gets its model version, which goes live in the registry."""
    with _errors(), ctx.open_runtime() as runtime:
        record = runtime.decisions.promote(key, arm, actor=ctx.settings.actor, reason=reason)
    click.echo(f"experiment {key}: promoted {record.arm_key} ({record.reason})")


@experiment.command("rollback")
@click.argument("key")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@pass_ctx
def experiment_rollback(ctx: Context, key: str, reason: str) -> None:
    """Roll back to control now (also undoes a promotion)."""
    with _errors(), ctx.open_runtime() as runtime:
        record = runtime.decisions.rollback(key, actor=ctx.settings.actor, reason=reason)
    click.echo(f"experiment {key}: rolled back to {record.arm_key} ({record.reason})")


@experiment.command("history")
@click.argument("key")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_ctx
def experiment_history(ctx: Context, key: str, fmt: str) -> None:
    """The audit trail: every look, decision and manual action, with who and why."""
    with _errors(), ctx.open_runtime() as runtime:
        history = runtime.experiments.history(key)
    if fmt == "json":
        from abkit.report.document import history_doc

        click.echo(json.dumps([history_doc(d) for d in history], indent=2))
        return
    for d in history:
        look = f"look {d.look:>3}" if d.look is not None else "manual  "
        arm = f" {d.arm_key}" if d.arm_key else ""
        click.echo(
            f"{d.decided_at:%Y-%m-%d %H:%M:%S}  {look}  {d.action}{arm}  by {d.actor}: {d.reason}"
        )


_status_command("start", "start")
_status_command("pause", "pause")
_status_command("resume", "start")


def _record_json(record: ExperimentRecord, counts: dict[str, int]) -> dict[str, Any]:
    doc = experiment_to_dict(record.experiment)
    doc.update(
        status=str(record.experiment.status),
        rollout_arm=record.experiment.rollout_arm,
        config_checksum=record.experiment.config_checksum,
        revision=record.revision,
        created_at=record.created_at.isoformat(),
        updated_at=record.updated_at.isoformat(),
        started_at=record.started_at.isoformat() if record.started_at else None,
        concluded_at=record.concluded_at.isoformat() if record.concluded_at else None,
        units=counts,
    )
    return doc


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


# -- servers -----------------------------------------------------------------------------------


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
    from abkit.rpc.processes import adopt_orphan_spools, process_spool, watch_supervisor
    from abkit.rpc.server import build_server
    from abkit.worker import Worker

    index, count = process
    if count > 1:
        watch_supervisor(os.getppid())
    with _errors():
        root = ctx.settings.spool_path
        if root is not None:
            if index == 0:
                adopt_orphan_spools(root, count)
            ctx.settings = replace(ctx.settings, spool_dir=process_spool(root, index))
        tel = telemetry.configure(ctx.settings, "abkit" if with_worker else "abkit-grpc")
        runtime = ctx.runtime()
        # Bound (not started) before any thread runs: a busy port fails fast, cleanly.
        web = _bind_web(ctx, runtime, web_address) if web_address is not None else None
        runtime.start()
        if not runtime.config.loaded:
            log.warning(
                "experiment config not loaded yet (%s); retrying in the background",
                runtime.config.last_error,
            )
        server = build_server(ctx.settings, runtime, tel, address=address, reuse_port=count > 1)
        server.start()
        worker = None
        if with_worker:
            worker = Worker(
                runtime.decisions,
                tel.tracer(),
                tick_seconds=ctx.settings.worker_tick_seconds,
                metrics=WorkerMetrics(tel.meter()),
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
    click.echo(
        f"abkit gRPC listening on {address or ctx.settings.grpc_address} (port {server.port})"
    )
    if web is not None:
        click.echo(f"abkit results page at {web.url}")
    _wait_for_signal()
    if web is not None:
        web.stop()
    server.stop()
    if worker is not None:
        worker.stop()
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

    with _errors():
        tel = telemetry.configure(ctx.settings, "abkit-worker")
        runtime = ctx.runtime()
        worker = Worker(
            runtime.decisions,
            tel.tracer(),
            tick_seconds=ctx.settings.worker_tick_seconds,
            metrics=WorkerMetrics(tel.meter()),
        )
        worker.start()
    click.echo("abkit worker running")
    _wait_for_signal()
    worker.stop()
    runtime.close()
    tel.shutdown()


def _wait_for_signal() -> None:
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping gracefully", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stopping.wait()


@main.command("worker")
@pass_ctx
def worker_command(ctx: Context) -> None:
    """Look at running experiments on their interval; promote, roll back or stop them."""
    _run_worker(ctx)


@main.command("grpc")
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
    with _errors():
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
        _fail(AbkitError(str(exc)))
    try:
        supervisor.start()
    except StartupFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    click.echo(
        f"abkit gRPC listening on {supervisor.address} (port {supervisor.port}, {count} processes)"
    )
    sys.exit(supervisor.wait())


@main.command("serve")
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

    with _errors():
        engine = create_store_engine(ctx.settings.database_url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
    web = web_address or ctx.settings.web_address
    _run_grpc(ctx, address, with_worker=True, web_address=None if web == "off" else web)


@main.command("web")
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
        with _errors():
            parse_address(address)
        # Each worker process builds its own app (and database pool) after the fork.
        run_gunicorn(lambda: create_app(settings), address, workers)
        return
    with _errors():
        runtime = ctx.runtime()
        server = _bind_web(ctx, runtime, address)
        server.start()
    click.echo(f"abkit results page at {server.url} (development server)")
    _wait_for_signal()
    server.stop()
    runtime.close()


@main.command("results")
@click.argument("key")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@pass_ctx
def results_command(ctx: Context, key: str, fmt: str) -> None:
    """The latest look at an experiment: the numbers the worker decided on, as on the page.

    json is the document of GET /api/experiments/KEY/results, csv that of .../results.csv.
    """
    from abkit.report import document, tables, text

    with _errors(), ctx.open_runtime() as runtime:
        results = runtime.results.results(key)
        now = runtime.clock.now()
    if fmt == "json":
        click.echo(json.dumps(document.results_doc(results, now), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        rows = tables.results_rows(results)
        click.echo(tables.csv_text(tables.RESULTS_COLUMNS, rows), nl=False)
    else:
        click.echo(text.results_text(results, now))


@main.command("demo")
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

    with _errors():
        action = run_demo(seed=seed, database_url=demo_url, echo=click.echo, scenario=scenario)
    sys.exit(0 if action == SCENARIOS[scenario].expect else 1)


# -- operations --------------------------------------------------------------------------------


@main.group()
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
        _fail(ValidationError("URL", "must start with http:// or https://"))
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


@main.command("forget")
@click.argument("unit_id")
@pass_ctx
def forget_command(ctx: Context, unit_id: str) -> None:
    """Erase every exposure and event of UNIT_ID (and its pseudonym); audited without the id.

    Rows still in a running server's memory queue or spool are written after this; run it
    again once the servers have flushed (at most ABKIT_WRITER_FLUSH_SECONDS, or after an outage).
    """
    with _errors(), ctx.open_runtime() as runtime:
        erased = runtime.privacy.forget(unit_id, actor=ctx.settings.actor)
    click.echo(
        f"erased {erased.exposures} exposures and {erased.events} events; "
        f"removed from {erased.overrides} experiment overrides"
    )


@main.command("prune")
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
    with _errors(flags, running):
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


@main.command("loadtest")
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
        _fail(ValidationError("TARGET", "give the server's host:port, or --baseline"))
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


if __name__ == "__main__":  # pragma: no cover
    main()
