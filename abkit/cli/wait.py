"""``abkit wait KEY``: block until an experiment is decided, and exit with a code a pipeline can
branch on.

It polls the experiment and its audit trail (:meth:`~abkit.services.experiments.
ExperimentService.trail`, one read per ``--poll-interval``), prints each new look (and manual
action) as the worker records it, and exits with the verdict's :class:`~abkit.cli.base.ExitCode`:

====================  ====  ================================================================
outcome               exit  when
====================  ====  ================================================================
promoted                 0  concluded with a promotion (by the worker or a person)
rolled_back             10  concluded with a rollback to control (a guardrail, SRM, a person)
stopped_inconclusive    11  concluded at its maximum duration without a winner
paused_too_long         12  paused for longer than ``--max-hold``
held_too_long           12  every look a hold (no analysis possible) for longer than that
timed_out               13  ``--timeout`` ran out first
(errors)              2/3/5 a bad option; no such experiment; the store unreachable
====================  ====  ================================================================

An experiment concluded before ``wait`` starts returns at once, with its code. The store
unreachable at the first read exits 5 at once (a wrong URL fails fast); an outage later is
retried at every poll, and exits 5 only if the store is still unreachable when ``--timeout``
runs out.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import click

from abkit.cli.base import Context, ExitCode, exit_code, fail, pass_ctx
from abkit.core.decision import Action
from abkit.core.formatting import duration, signed
from abkit.core.model import ExperimentStatus
from abkit.errors import AbkitError, StoreUnavailableError

if TYPE_CHECKING:
    from abkit.ports import Clock, DecisionRecord, ExperimentRecord
    from abkit.services.experiments import ExperimentService
    from abkit.services.registry import RegistrySync


class Outcome(StrEnum):
    """How a wait ends (besides errors), each with its exit code."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    STOPPED_INCONCLUSIVE = "stopped_inconclusive"
    PAUSED_TOO_LONG = "paused_too_long"
    HELD_TOO_LONG = "held_too_long"
    TIMED_OUT = "timed_out"

    @property
    def exit_code(self) -> ExitCode:
        return OUTCOME_CODES[self]


OUTCOME_CODES = {
    Outcome.PROMOTED: ExitCode.OK,
    Outcome.ROLLED_BACK: ExitCode.ROLLED_BACK,
    Outcome.STOPPED_INCONCLUSIVE: ExitCode.STOPPED_INCONCLUSIVE,
    Outcome.PAUSED_TOO_LONG: ExitCode.HELD_TOO_LONG,
    Outcome.HELD_TOO_LONG: ExitCode.HELD_TOO_LONG,
    Outcome.TIMED_OUT: ExitCode.TIMED_OUT,
}
_CONCLUDED = {
    Action.PROMOTE: Outcome.PROMOTED,
    Action.ROLLBACK: Outcome.ROLLED_BACK,
    Action.STOP_INCONCLUSIVE: Outcome.STOPPED_INCONCLUSIVE,
}
# The audit entries after which holds start counting again: the experiment (re)started.
_RESTARTS = frozenset({"start", "resume", "create+start"})


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    message: str
    entry: DecisionRecord | None = None
    """The audit entry that decided it (the terminal decision, the latest hold)."""


def judge(
    record: ExperimentRecord,
    history: list[DecisionRecord],
    now: datetime,
    max_hold: float | None,
) -> Verdict | None:
    """The verdict on an experiment and its audit trail at ``now``; ``None``: keep waiting."""
    status = record.experiment.status
    if status is ExperimentStatus.CONCLUDED:
        return _concluded(record, history)
    if max_hold is None:
        return None
    if status is ExperimentStatus.PAUSED:
        pause = next((d for d in reversed(history) if d.action == "pause"), None)
        since = pause.decided_at if pause is not None else record.updated_at
        paused = (now - since).total_seconds()
        if paused > max_hold:
            who = f" by {pause.actor}" if pause is not None else ""
            return Verdict(
                Outcome.PAUSED_TOO_LONG,
                f"{record.key} has been paused{who} for {duration(paused)}, longer than "
                f"--max-hold {duration(max_hold)}; resume it with `abkit experiment resume "
                f"{record.key}`",
                pause,
            )
    if status is ExperimentStatus.RUNNING:
        holds = _holding(history)
        if holds and (now - holds[0].decided_at).total_seconds() > max_hold:
            held = (now - holds[0].decided_at).total_seconds()
            return Verdict(
                Outcome.HELD_TOO_LONG,
                f"every look of {record.key} has held for {duration(held)} ({len(holds)} look(s) "
                f"since look {holds[0].look}), longer than --max-hold {duration(max_hold)}: "
                f"{holds[-1].reason}",
                holds[-1],
            )
    return None


def _concluded(record: ExperimentRecord, history: list[DecisionRecord]) -> Verdict:
    experiment = record.experiment
    entry = next((d for d in reversed(history) if Action.terminal_name(d.action)), None)
    if entry is not None:
        outcome = _CONCLUDED[Action(entry.action)]
    elif experiment.rollout_arm not in (None, experiment.control.key):
        outcome = Outcome.PROMOTED  # a trail without its decision (edited by hand)
    else:
        outcome = Outcome.ROLLED_BACK
    arm = entry.arm_key if entry is not None and entry.arm_key else experiment.rollout_arm
    version = {a.key: a.model_version for a in experiment.arms}.get(arm or "", "?")
    words = {
        Outcome.PROMOTED: f"promoted {arm} ({version})",
        Outcome.ROLLED_BACK: f"rolled back to {arm} ({version})",
        Outcome.STOPPED_INCONCLUSIVE: f"stopped inconclusive, keeping {arm} ({version})",
    }[outcome]
    if entry is None:
        return Verdict(outcome, f"{record.key}: {words}", None)
    by = f"at look {entry.look}" if entry.look is not None else f"by {entry.actor}"
    return Verdict(outcome, f"{record.key}: {words} {by}: {entry.reason}", entry)


def _holding(history: list[DecisionRecord]) -> list[DecisionRecord]:
    """The unbroken run of holds among the latest looks (oldest first); empty if the latest
    look did not hold. A start or resume ends the run: the holds before it are history."""
    run: list[DecisionRecord] = []
    for entry in reversed(history):
        if entry.look is None:
            if entry.action in _RESTARTS:
                break
            continue
        if entry.action != Action.HOLD.value:
            break
        run.append(entry)
    return run[::-1]


def _stalled(
    record: ExperimentRecord, history: list[DecisionRecord], now: datetime
) -> tuple[str, str] | None:
    """Why no look may come (a draft, no policy, no worker): its kind and the words; or
    ``None``."""
    experiment = record.experiment
    if experiment.status is ExperimentStatus.DRAFT:
        return "draft", (
            f"{record.key} is a draft: nothing is decided until it starts "
            f"(`abkit experiment start {record.key}`)"
        )
    if experiment.status is not ExperimentStatus.RUNNING:
        return None
    if record.policy is None and record.policy_error is None:
        return "no policy", (
            f"{record.key} has no policy: the worker never decides it, only "
            "`abkit experiment promote|rollback` ends this wait"
        )
    if record.policy is None:
        return None
    looks = [d.decided_at for d in history if d.look is not None]
    last = looks[-1] if looks else record.started_at
    interval = record.policy.look_interval_seconds
    if last is not None and (now - last).total_seconds() > 3 * interval + 60:
        return "no look", (
            f"no look at {record.key} for {duration((now - last).total_seconds())} (its look "
            f"interval is {duration(interval)}): is `abkit worker` or `abkit serve` running?"
        )
    return None


class Output:
    """What ``wait`` prints: lines for people, or one JSON object per line (``--json``)."""

    def __init__(self, key: str, as_json: bool) -> None:
        self.key = key
        self.as_json = as_json
        self._noted: set[str] = set()

    def _json(self, event: str, **fields: Any) -> None:
        click.echo(json.dumps({"event": event, "experiment": self.key, **fields}))

    def waiting(self, record: ExperimentRecord, history: list[DecisionRecord]) -> None:
        looks = [d for d in history if d.look is not None]
        status = record.experiment.status
        if self.as_json:
            self._json("waiting", status=status.value, looks=len(looks))
            return
        last = f", the last: {looks[-1].action}" if looks else ""
        click.echo(f"waiting for {self.key}: {status}, {len(looks)} look(s) so far{last}")

    def entry(self, entry: DecisionRecord) -> None:
        if self.as_json:
            event, doc = _entry_doc(self.key, entry)
            self._json(event, **doc)
        else:
            click.echo(_entry_line(self.key, entry))

    def note(self, message: str, *, once: str | None = None) -> None:
        """A word for people, on stderr; with ``once``, only the first note of that kind."""
        if once is not None:
            if once in self._noted:
                return
            self._noted.add(once)
        click.echo(f"note: {message}", err=True)

    def result(self, verdict: Verdict, record: ExperimentRecord | None, waited: float) -> None:
        code = verdict.outcome.exit_code
        if not self.as_json:
            click.echo(f"{verdict.outcome.value} (exit {int(code)}): {verdict.message}")
            return
        entry = verdict.entry
        arm = entry.arm_key if entry is not None else None
        arms = {a.key: a.model_version for a in record.experiment.arms} if record else {}
        self._json(
            "result",
            outcome=verdict.outcome.value,
            exit_code=int(code),
            message=verdict.message,
            status=record.experiment.status.value if record else None,
            arm=arm,
            model_version=arms.get(arm) if arm else None,
            look=entry.look if entry is not None else None,
            waited_seconds=round(waited, 3),
        )

    @contextmanager
    def failures(self) -> Iterator[None]:
        """An error ends the wait with its code; with ``--json``, a result line says so too."""
        try:
            yield
        except AbkitError as exc:
            if self.as_json:
                code = exit_code(exc)
                outcome = {
                    ExitCode.INVALID_INPUT: "invalid_input",
                    ExitCode.NOT_FOUND: "not_found",
                    ExitCode.STORE_UNREACHABLE: "store_unreachable",
                }.get(code, "error")
                self._json("result", outcome=outcome, exit_code=int(code), message=str(exc))
            fail(exc)


def _comparisons(key: str, entry: DecisionRecord) -> tuple[dict[str, int], list[Any]]:
    from abkit.core.snapshot import read_look

    snapshot = read_look(entry.snapshot, experiment_key=key, look=entry.look, at=entry.decided_at)
    if snapshot is None:
        return {}, []
    analysis = snapshot.analysis
    shown = [c for c in analysis.comparisons if math.isfinite(c.estimate)]
    return dict(analysis.units), shown


def _entry_line(key: str, entry: DecisionRecord) -> str:
    at = f"{entry.decided_at:%Y-%m-%d %H:%M:%S}"
    arm = f" {entry.arm_key}" if entry.arm_key else ""
    if entry.look is None:
        return f"{at}  {entry.action}{arm} by {entry.actor}: {entry.reason}"
    units, comparisons = _comparisons(key, entry)
    parts = [f"look {entry.look:>3}", at]
    if units:
        parts.append("units " + " ".join(f"{a}={n:,}" for a, n in units.items()))
    for c in comparisons:
        interval = f"[{signed(c.ci_low, c.relative)}, {signed(c.ci_high, c.relative)}]"
        parts.append(f"{c.metric} {signed(c.estimate, c.relative)} {interval}")
    return "  ".join(parts) + f"  -> {entry.action}{arm}: {entry.reason}"


def _entry_doc(key: str, entry: DecisionRecord) -> tuple[str, dict[str, Any]]:
    common = {
        "at": entry.decided_at.isoformat(),
        "action": entry.action,
        "arm": entry.arm_key,
        "actor": entry.actor,
        "reason": entry.reason,
    }
    if entry.look is None:
        return "action", common
    units, comparisons = _comparisons(key, entry)
    return "look", {
        "look": entry.look,
        **common,
        "units": units,
        "comparisons": [
            {
                "metric": c.metric,
                "role": c.role.value,
                "arm": c.arm,
                "relative": c.relative,
                "estimate": _finite(c.estimate),
                "ci_low": _finite(c.ci_low),
                "ci_high": _finite(c.ci_high),
            }
            for c in comparisons
        ],
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Limits:
    timeout: float | None
    max_hold: float | None
    poll: float


def watch(
    experiments: ExperimentService, clock: Clock, key: str, out: Output, limits: Limits
) -> tuple[Verdict, ExperimentRecord | None]:
    """Poll until a verdict; the verdict and the experiment as last read."""
    started = time.monotonic()
    record, history = experiments.trail(key)  # unreachable or unknown: fail at once
    out.waiting(record, history)
    seen = len(history)
    outage: StoreUnavailableError | None = None
    while True:
        if outage is None:
            now = clock.now()
            verdict = judge(record, history, now, limits.max_hold)
            if verdict is not None:
                return verdict, record
            if (stalled := _stalled(record, history, now)) is not None:
                kind, why = stalled
                out.note(why, once=kind)
        waited = time.monotonic() - started
        if limits.timeout is not None and waited >= limits.timeout:
            if outage is not None:
                raise outage
            message = f"{key} is still {record.experiment.status} after {duration(waited)}"
            return Verdict(Outcome.TIMED_OUT, message), record
        pause = limits.poll
        if limits.timeout is not None:
            pause = min(pause, limits.timeout - waited)
        time.sleep(pause)
        try:
            record, history = experiments.trail(key)
        except StoreUnavailableError as exc:
            if outage is None:
                out.note(f"the store is unreachable, retrying every {limits.poll:g} s: {exc}")
            outage = exc
            continue
        if outage is not None:
            out.note("the store answers again")
            outage = None
        for entry in history[seen:]:
            out.entry(entry)
        seen = len(history)


def settle(
    registry: RegistrySync,
    key: str,
    out: Output,
    limits: Limits,
    started: float,
    verdict: Verdict,
) -> Verdict:
    """A decision is done when its model-registry changes are (MLflow's ``champion`` moved):
    a pipeline that deploys ``models:/NAME@champion`` next must get the new version. Waits for
    the decision's outbox items within ``--timeout`` (exit 13 if they are still pending)."""
    while pending := registry.pending(key):
        from abkit.report.wording import registry_pending

        out.note(
            f"decided; waiting for the registry: {registry_pending(pending[0])}", once="mlflow"
        )
        waited = time.monotonic() - started
        if limits.timeout is not None and waited >= limits.timeout:
            return Verdict(
                Outcome.TIMED_OUT,
                f"{verdict.message}; but after {duration(waited)} the model registry still has "
                f"{len(pending)} change(s) pending: {registry_pending(pending[0])}",
                verdict.entry,
            )
        pause = limits.poll if limits.timeout is None else min(limits.poll, limits.timeout - waited)
        time.sleep(max(pause, 0.0))
    return verdict


@click.command("wait")
@click.argument("key")
@click.option(
    "--timeout",
    metavar="DURATION",
    help="Give up after this long (90s, 30m, 2h, 1d): exit 13. Default: wait until decided.",
)
@click.option(
    "--max-hold",
    metavar="DURATION",
    help="Exit 12 once the experiment has been paused, or every look has held, for longer "
    "than this. Default: keep waiting.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to read the store.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line: each look, then the result."
)
@pass_ctx
def wait_command(
    ctx: Context,
    key: str,
    timeout: str | None,
    max_hold: str | None,
    poll_interval: float,
    as_json: bool,
) -> None:
    """Block until experiment KEY is decided, printing each new look; exit with the verdict.

    0 promoted, 10 rolled back, 11 stopped inconclusive, 12 paused or held longer than
    --max-hold, 13 timed out; 3 no such experiment, 5 store unreachable. With MLflow
    configured, a decision counts once its alias changes are done in the registry.
    """
    from abkit.core.metrics import parse_duration

    out = Output(key, as_json)
    started = time.monotonic()
    with out.failures():
        limits = Limits(
            timeout=float(parse_duration(timeout, "--timeout")) if timeout else None,
            max_hold=float(parse_duration(max_hold, "--max-hold")) if max_hold else None,
            poll=poll_interval,
        )
        with ctx.open_runtime() as runtime:
            verdict, record = watch(runtime.experiments, runtime.clock, key, out, limits)
            if verdict.outcome in _CONCLUDED.values():
                verdict = settle(runtime.registry_sync, key, out, limits, started, verdict)
    out.result(verdict, record, time.monotonic() - started)
    sys.exit(verdict.outcome.exit_code)
