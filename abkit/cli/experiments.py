"""``abkit db`` and ``abkit experiment``: the schema, declaring and steering experiments, and
``abkit results``, the numbers the worker decided on."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from abkit.cli.base import Context, errors, pass_ctx, print_table
from abkit.core.spec import experiment_to_dict
from abkit.errors import (
    ConflictError,
    StatisticsMismatchError,
    StoreUnavailableError,
    ValidationError,
)

if TYPE_CHECKING:
    from abkit.ports import ExperimentRecord
    from abkit.runtime import Runtime
    from abkit.services.experiments import ApplyResult
    from abkit.services.views import PendingRegistryChange


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(ctx: Context, revision: str) -> None:
    """Create or migrate the schema (safe to run repeatedly)."""
    from abkit.store import migrate
    from abkit.store.engine import create_store_engine

    with errors():
        engine = create_store_engine(ctx.settings.database_url)
        try:
            migrate.upgrade(engine, revision)
            click.echo(f"database at revision {migrate.current_revision(engine)}")
        except Exception as exc:
            raise StoreUnavailableError(f"migration failed: {exc}") from exc
        finally:
            engine.dispose()


@click.group()
def experiment() -> None:
    """Declare, inspect, start and pause experiments."""


@experiment.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(),
    help="An experiment YAML/JSON file, or a directory: every *.yaml, *.yml and *.json file in "
    "it, applied in one transaction (all or nothing).",
)
@click.option(
    "--start", is_flag=True, help="Start new and draft experiments (resume paused ones) right away."
)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@pass_ctx
def experiment_apply(ctx: Context, path: str, start: bool, dry_run: bool) -> None:
    """Create or update experiments from a file or a directory (idempotent); print what changes.

    Exits 2 on an invalid file and 4 on a change the current state refuses (new arms for a
    running experiment), naming the file and the field; then nothing is applied.
    """
    from abkit.services.experiments import ApplyOutcome, ApplyRequest
    from abkit.specfile import load_experiments

    whole = {
        ValidationError: "nothing was applied",
        ConflictError: "nothing was applied",
    }
    with errors(hints=whole if Path(path).is_dir() else None):
        requests = [
            ApplyRequest(spec.experiment, spec.policy, source=str(file))
            for file, spec in load_experiments(path)
        ]
        with ctx.open_runtime() as runtime:
            results = runtime.experiments.apply_all(
                requests, actor=ctx.settings.actor, start=start, dry_run=dry_run
            )
    if dry_run:
        click.echo("dry run: nothing is written")
    for result in results:
        for line in _apply_lines(result, dry_run=dry_run):
            click.echo(line)
    if len(results) > 1 or dry_run:
        counts = Counter(r.outcome.value for r in results)
        done = ", ".join(f"{counts[o.value]} {o.value}" for o in ApplyOutcome if counts[o.value])
        verb = "would be" if dry_run else "were"
        click.echo(f"{len(results)} experiment(s) {verb} applied: {done}")


def _apply_lines(result: ApplyResult, *, dry_run: bool) -> list[str]:
    """One experiment's part of the diff: what happened to it, then each field old -> new."""
    from abkit.services.experiments import ApplyOutcome

    exp = result.record.experiment
    detail = f" ({', '.join(result.changed)})" if result.changed else ""
    if dry_run:
        verb = (
            "unchanged"
            if result.outcome is ApplyOutcome.UNCHANGED
            else "would be " + result.outcome
        )
        head = f"experiment {exp.key} {verb}{detail}; status {exp.status}"
    else:
        head = (
            f"experiment {exp.key} {result.outcome}{detail}; "
            f"status {exp.status}, revision {result.record.revision}"
        )
    lines = [f"{head}  [{result.source}]" if result.source else head]
    lines += [f"  {c.field}: {_value(c.old)} -> {_value(c.new)}" for c in result.changes]
    if result.status_before is not None and result.status_before is not exp.status:
        lines.append(f"  status: {result.status_before} -> {exp.status}")
    return lines


def _value(value: object) -> str:
    """A field's document value on one line (JSON: what the file would say)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


@experiment.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_ctx
def experiment_list(ctx: Context, fmt: str) -> None:
    """All experiments with their status and units per arm."""
    with errors(), ctx.open_runtime() as runtime:
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
    print_table(rows)


@experiment.command("show")
@click.argument("key")
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
@pass_ctx
def experiment_show(ctx: Context, key: str, fmt: str) -> None:
    """One experiment: its config, status and units per arm."""
    import yaml

    with errors(), ctx.open_runtime() as runtime:
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
        with errors(), ctx.open_runtime() as runtime:
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
    with errors(), ctx.open_runtime() as runtime:
        record = runtime.decisions.promote(key, arm, actor=ctx.settings.actor, reason=reason)
        pending = _registry_after_decision(runtime, key)
    click.echo(f"experiment {key}: promoted {record.arm_key} ({record.reason})")
    _echo_pending(pending)


@experiment.command("rollback")
@click.argument("key")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@pass_ctx
def experiment_rollback(ctx: Context, key: str, reason: str) -> None:
    """Roll back to control now (also undoes a promotion)."""
    with errors(), ctx.open_runtime() as runtime:
        record = runtime.decisions.rollback(key, actor=ctx.settings.actor, reason=reason)
        pending = _registry_after_decision(runtime, key)
    click.echo(f"experiment {key}: rolled back to {record.arm_key} ({record.reason})")
    _echo_pending(pending)


def _registry_after_decision(runtime: Runtime, key: str) -> list[PendingRegistryChange]:
    """Give the decision's registry changes (MLflow aliases) a moment; what is still pending."""
    runtime.outbox.flush(10)
    return runtime.registry_sync.pending(key)


def _echo_pending(pending: list[PendingRegistryChange]) -> None:
    from abkit.report.wording import registry_pending

    for p in pending:
        click.echo(f"  {registry_pending(p)}; the worker retries it until it is done")


@experiment.command("history")
@click.argument("key")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_ctx
def experiment_history(ctx: Context, key: str, fmt: str) -> None:
    """The audit trail: every look, decision and manual action, with who and why."""
    with errors(), ctx.open_runtime() as runtime:
        history = runtime.experiments.history(key)
        pending = runtime.registry_sync.pending(key)
    if fmt == "json":
        from abkit.report.document import history_doc

        click.echo(json.dumps([history_doc(d) for d in history], indent=2))
        return
    from abkit.report.wording import registry_pending

    for d in history:
        look = f"look {d.look:>3}" if d.look is not None else "manual  "
        if d.action == "registry":
            look = "        "
        arm = f" {d.arm_key}" if d.arm_key else ""
        click.echo(
            f"{d.decided_at:%Y-%m-%d %H:%M:%S}  {look}  {d.action}{arm}  by {d.actor}: {d.reason}"
        )
    for p in pending:
        click.echo(f"{p.created_at:%Y-%m-%d %H:%M:%S}  pending   registry  {registry_pending(p)}")


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


@click.command("results")
@click.argument("key")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--recompute",
    is_flag=True,
    help="Bring the maintained statistics up to date and print them next to a full "
    "recomputation from every row; exit 6 on any difference.",
)
@pass_ctx
def results_command(ctx: Context, key: str, fmt: str, recompute: bool) -> None:
    """The latest look at an experiment: the numbers the worker decided on, as on the page.

    json is the document of GET /api/experiments/KEY/results, csv that of .../results.csv.
    """
    from abkit.report import document, tables, text

    if recompute:
        _recompute(ctx, key, fmt)
        return
    with errors(), ctx.open_runtime() as runtime:
        results = runtime.results.results(key)
        now = runtime.clock.now()
    if fmt == "json":
        click.echo(json.dumps(document.results_doc(results, now), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        rows = tables.results_rows(results)
        click.echo(tables.csv_text(tables.RESULTS_COLUMNS, rows), nl=False)
    else:
        click.echo(text.results_text(results, now))


def _recompute(ctx: Context, key: str, fmt: str) -> None:
    from dataclasses import asdict, fields

    from abkit.core.increments import close

    with errors(), ctx.open_runtime() as runtime:
        with runtime.store.transaction() as tx:
            record = tx.experiments.get(key)
        if record.policy is None:
            raise ValidationError("policy", f"{key!r} has no policy: it has no statistics to check")
        check = runtime.statistics.reconcile(key, record.policy.metrics)
    rows = []
    for metric in record.policy.metrics:
        mine, full = check.maintained[metric.name], check.recomputed.get(metric.name, {})
        for arm in sorted(set(mine) | set(full)):
            a = asdict(mine[arm]) if arm in mine else {}
            b = asdict(full[arm]) if arm in full else {}
            scale = max([1.0, *(abs(float(v)) for v in (*a.values(), *b.values()))])
            summary = mine.get(arm) or full[arm]
            names = [f.name for f in fields(summary)]
            if metric.cuped_lookback_seconds is None and "x_sum" in names:
                names = names[:3]  # no covariate: its moments are all zero
            for name in names:
                ma, re = a.get(name), b.get(name)
                same = ma is not None and re is not None and close(ma, re, scale)
                rows.append([metric.name, arm, name, ma, re, "" if same else "DIFFERS"])
    marks = {name: [w.exposures, w.events] for name, w in check.watermarks.items()}
    if fmt == "json":
        doc = {
            "experiment_key": key,
            "watermarks": marks,
            "ok": check.ok,
            "differences": list(check.differences),
            "rows": [dict(zip(RECOMPUTE_COLUMNS, r, strict=True)) for r in rows],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        print_table(
            [RECOMPUTE_COLUMNS, *(tuple("-" if c is None else str(c) for c in r) for r in rows)]
        )
        watermark = ", ".join(f"{n} at {w[0]} exposures / {w[1]} events" for n, w in marks.items())
        click.echo(f"watermark: {watermark}")
        click.echo(
            "maintained statistics equal the full recomputation"
            if check.ok
            else f"{len(check.differences)} number(s) differ"
        )
    if not check.ok:
        with errors():
            raise StatisticsMismatchError(
                f"{key!r}: maintained statistics differ from the full recomputation: "
                + "; ".join(check.differences[:3])
            )


RECOMPUTE_COLUMNS = ("metric", "arm", "field", "maintained", "recomputed", "check")
