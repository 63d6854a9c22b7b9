"""The privacy use case: erasure of one unit (``abkit forget``) and retention (``abkit prune``).

Both are audited with *what* was erased -- counts -- never the unit id or its pseudonym.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from abkit.core.limits import check_unit_id
from abkit.core.model import ExperimentStatus
from abkit.errors import ConflictError, ValidationError
from abkit.ports import AuditEntry, Clock, Store


@dataclass(frozen=True, slots=True)
class Erasure:
    exposures: int
    events: int
    overrides: int


@dataclass(frozen=True, slots=True)
class Pruning:
    cutoff: datetime
    exposures: int
    events: int


class PrivacyService:
    """Erasure of one unit (``abkit forget``) and retention (``abkit prune``), both audited.

    The audit records *what* was erased -- counts -- never the unit id or its pseudonym.
    """

    def __init__(
        self, store: Store, clock: Clock, pseudonymize: Callable[[str], str] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._pseudonymize = pseudonymize

    def forget(self, unit_id: str, *, actor: str) -> Erasure:
        """Erase every exposure and event of ``unit_id`` and remove it from overrides."""
        check_unit_id(unit_id)
        stored = [unit_id]
        if self._pseudonymize is not None:
            stored.append(self._pseudonymize(unit_id))
        now = self._clock.now()
        with self._store.transaction() as tx:
            # The maintained statistics first: what the unit added comes out of the sums, so no
            # table keeps a trace of its values.
            tx.maintained.erase_units(stored, now=now)
            exposures = tx.exposures.delete_units(stored)
            events = tx.events.delete_units(stored)
            overrides = 0
            for record in tx.experiments.list():
                current = dict(record.experiment.overrides)
                if unit_id not in current:
                    continue
                del current[unit_id]
                overrides += 1
                tx.experiments.save(
                    replace(
                        record,
                        experiment=replace(record.experiment, overrides=current),
                        updated_at=now,
                    ),
                    expected_revision=record.revision,
                )
            erasure = Erasure(exposures, events, overrides)
            tx.audit.add(
                AuditEntry(
                    "forget",
                    actor,
                    now,
                    {"exposures": exposures, "events": events, "overrides": overrides},
                )
            )
        return erasure

    def prune(self, older_than: timedelta, *, actor: str, include_running: bool = False) -> Pruning:
        """Erase events and exposures older than ``older_than``.

        Exposures of running experiments are kept, and events are not pruned while a running
        experiment started before the cutoff (its analysis would silently change), unless
        ``include_running``.
        """
        if older_than <= timedelta(0):
            raise ValidationError("older_than", "must be a positive duration such as 180d")
        now = self._clock.now()
        cutoff = now - older_than
        with self._store.transaction() as tx:
            records = tx.experiments.list()
            running = [r for r in records if r.experiment.status is ExperimentStatus.RUNNING]
            early = [r.key for r in running if r.started_at is not None and r.started_at < cutoff]
            if early and not include_running:
                raise ConflictError(
                    f"running experiments started before {cutoff:%Y-%m-%d}: {', '.join(early)}; "
                    "pruning their data would change their analysis. Conclude them first, or "
                    "include running experiments explicitly"
                )
            keys = [r.key for r in records if include_running or r not in running]
            # Statistics that may count what goes are dropped; the next look recomputes them.
            tx.maintained.invalidate_before(cutoff)
            exposures = tx.exposures.delete_before(cutoff, keys)
            events = tx.events.delete_before(cutoff)
            tx.audit.add(
                AuditEntry(
                    "prune",
                    actor,
                    now,
                    {
                        "cutoff": cutoff.isoformat(),
                        "exposures": exposures,
                        "events": events,
                        "include_running": include_running,
                    },
                )
            )
        return Pruning(cutoff, exposures, events)
