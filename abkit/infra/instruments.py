"""OpenTelemetry metrics: the instruments, and what each one is for.

============================  =========  =========================================================
instrument                    kind       attributes / meaning
============================  =========  =========================================================
``rpc.server.duration``       histogram  ms per RPC; ``rpc.method``, ``rpc.grpc.status_code``
``abkit.assignments``         counter    ``abkit.experiment``, ``abkit.arm``, ``abkit.reason``
``abkit.records.written``     counter    rows inserted; ``abkit.infra.writer`` = exposures|events
``abkit.records.spooled``     counter    rows sent to the on-disk spool (store down)
``abkit.records.replayed``    counter    spooled rows written after the store came back
``abkit.records.dropped``     counter    rows refused (queue full, shutting down)
``abkit.infra.writer.queue_depth``  gauge      rows waiting in memory
``abkit.infra.spool.bytes``         gauge      bytes waiting on disk
``abkit.store.errors``        counter    failed writes and failed config refreshes
``abkit.store.up``            gauge      1 when the store accepts writes, else 0
``abkit.looks``               counter    worker looks; ``abkit.action``
============================  =========  =========================================================

Observable instruments read the writers' counters when the SDK collects, so the request path pays
nothing for them. The assignments counter is aggregated per RPC (one ``add`` per distinct
experiment, arm and reason of the call, not one per unit).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from abkit.core.assignment import Assignment

if TYPE_CHECKING:
    from abkit.infra.writer import BufferedWriter
    from abkit.runtime import Runtime

WRITER = "abkit.infra.writer"


class RpcMetrics:
    """Per-RPC instruments. Assignments are tallied in a plain dict and reported through an
    observable counter: an OpenTelemetry ``add`` with attributes costs tens of microseconds
    here, a dict increment a fraction of one."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Duration of inbound RPCs"
        )
        self._tally: Tally[tuple[str, str, str]] = Tally()
        # id -> (the answer, its labels): holding the answer keeps its id from being reused.
        self._labels: dict[int, tuple[Assignment, tuple[str, str, str]]] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(
            "abkit.assignments",
            callbacks=[self._observe],
            unit="{assignment}",
            description="Assignments answered",
        )

    def count_assignments(self, answers: Iterable[Sequence[Assignment]]) -> None:
        labels = self._labels
        tally = self._tally
        with self._lock:
            for per_unit in answers:
                for a in per_unit:
                    entry = labels.get(id(a))
                    if entry is None or entry[0] is not a:
                        entry = labels[id(a)] = (a, (a.experiment_key, a.arm_key, a.reason.value))
                    tally[entry[1]] += 1

    def _snapshot(self) -> list[tuple[tuple[str, str, str], int]]:
        with self._lock:
            return list(self._tally.items())

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"abkit.experiment": key, "abkit.arm": arm, "abkit.reason": reason})
            for (key, arm, reason), n in self._snapshot()
        ]


def observe_runtime(meter: Meter, runtime: Runtime) -> None:
    """Register the observable instruments that read ``runtime``'s writers and store state."""
    writers: dict[str, BufferedWriter[Any]] = {
        "exposures": runtime.exposure_writer,
        "events": runtime.event_writer,
    }

    def counter(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(getattr(w.stats(), field), {WRITER: name})
                for name, w in writers.items()
            ]

        return callback

    for name, field, description in (
        ("abkit.records.written", "written", "Rows inserted into the store"),
        ("abkit.records.spooled", "spooled", "Rows spooled to disk while the store was down"),
        ("abkit.records.replayed", "replayed", "Spooled rows written after the store returned"),
        ("abkit.records.dropped", "dropped", "Rows refused: queue full or shutting down"),
    ):
        meter.create_observable_counter(
            name,
            callbacks=[counter(field)],
            unit="{row}",
            description=description,
        )

    def queue_depth(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(w.stats().queued, {WRITER: name}) for name, w in writers.items()]

    def spool_bytes(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(w.stats().spool_bytes, {WRITER: name}) for name, w in writers.items()]

    def store_errors(_options: CallbackOptions) -> Iterable[Observation]:
        failures = sum(w.stats().failed_flushes for w in writers.values())
        return [Observation(failures + runtime.config.failures)]

    def store_up(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(0 if runtime.degraded else 1)]

    meter.create_observable_gauge(
        "abkit.infra.writer.queue_depth", callbacks=[queue_depth], unit="{row}",
        description="Rows waiting in memory to be written",
    )  # fmt: skip
    meter.create_observable_gauge(
        "abkit.infra.spool.bytes", callbacks=[spool_bytes], unit="By",
        description="Bytes waiting in the on-disk spool",
    )  # fmt: skip
    meter.create_observable_counter(
        "abkit.store.errors", callbacks=[store_errors], unit="{error}",
        description="Failed writes and failed config refreshes",
    )  # fmt: skip
    meter.create_observable_gauge(
        "abkit.store.up", callbacks=[store_up], unit="1",
        description="1 when the store accepts writes and config refreshes, else 0",
    )  # fmt: skip


class WorkerMetrics:
    def __init__(self, meter: Meter) -> None:
        self.looks = meter.create_counter(
            "abkit.looks", unit="{look}", description="Looks taken by the decision worker"
        )

    def count_look(self, action: str) -> None:
        self.looks.add(1, {"abkit.action": action})
