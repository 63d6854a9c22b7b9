"""OpenTelemetry metrics: the instruments, and what each one is for.

============================  =========  =========================================================
instrument                    kind       attributes / meaning
============================  =========  =========================================================
``rpc.server.duration``       histogram  ms per RPC; ``rpc.method``, ``rpc.grpc.status_code``
``abkit.assignments``         counter    ``abkit.experiment``, ``abkit.arm``, ``abkit.reason``
``abkit.records.accepted``    counter    rows made durable in the journal (all kinds)
``abkit.records.written``     counter    rows inserted into the store; ``abkit.writer`` =
                                         exposures|events
``abkit.records.published``   counter    rows acknowledged by the stream (stream mode)
``abkit.records.dropped``     counter    rows refused (journal full or failed); ``abkit.writer``
``abkit.writer.queue_depth``  gauge      rows accepted, not yet in the store (the backlog)
``abkit.spool.bytes``         gauge      bytes of the journal not yet in the store
``abkit.journal.syncs``       counter    group commits (one fsync each)
``abkit.store.errors``        counter    failed writes and failed config refreshes
``abkit.store.up``            gauge      1 when the store accepts writes, else 0
``abkit.looks``               counter    worker looks; ``abkit.action``
``abkit.loader.lag``          gauge      messages of the stream the loaders have not acknowledged
``abkit.loader.rows``         counter    rows a loader inserted; ``abkit.writer`` = exposures|events
``abkit.loader.duplicates``   counter    rows a loader found stored already (redeliveries)
``abkit.loader.dead_letters`` counter    messages a loader dead-lettered
============================  =========  =========================================================

Observable instruments read the journal's and the drain's counters when the SDK collects, so
the request path pays nothing for them. The assignments counter is aggregated per RPC (one
``add`` per distinct experiment, arm and reason of the call, not one per unit).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from abkit.core.assignment import Assignment

if TYPE_CHECKING:
    from abkit.infra.ingest import IngestStats
    from abkit.infra.loader import StreamLoader
    from abkit.runtime import Runtime

WRITER = "abkit.writer"


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
    """Register the observable instruments that read ``runtime``'s ingest path and store."""

    def observe(
        read: Callable[[], Iterable[Observation]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        return lambda _options: read()

    def stats() -> IngestStats:
        return runtime.ingest.stats()

    def written() -> Iterable[Observation]:
        return [Observation(n, {WRITER: kind}) for kind, n in stats().written.items()]

    def dropped() -> Iterable[Observation]:
        return [Observation(n, {WRITER: kind}) for kind, n in stats().refused.items()]

    def one(value: Callable[[IngestStats], int]) -> Callable[[], Iterable[Observation]]:
        return lambda: [Observation(value(stats()))]

    def store_errors() -> Iterable[Observation]:
        return [Observation(stats().failed_batches + runtime.config.failures)]

    def store_up() -> Iterable[Observation]:
        return [Observation(0 if runtime.degraded else 1)]

    for name, read, unit, description in (
        ("abkit.records.accepted", one(lambda s: s.accepted_rows), "{row}",
         "Rows made durable (the journal or the stream)"),
        ("abkit.records.written", written, "{row}", "Rows inserted into the store"),
        ("abkit.records.published", one(lambda s: s.published_rows), "{row}",
         "Rows acknowledged by the stream (stream mode)"),
        ("abkit.records.dropped", dropped, "{row}", "Rows refused: the journal full or failed"),
        ("abkit.journal.syncs", one(lambda s: s.syncs), "{sync}",
         "Group commits of the journal (one fsync each)"),
        ("abkit.store.errors", store_errors, "{error}", "Failed writes and config refreshes"),
    ):  # fmt: skip
        meter.create_observable_counter(
            name, callbacks=[observe(read)], unit=unit, description=description
        )
    for name, read, unit, description in (
        ("abkit.writer.queue_depth", one(lambda s: s.backlog_rows), "{row}",
         "Rows accepted, not yet in the store (or the stream)"),
        ("abkit.spool.bytes", one(lambda s: s.backlog_bytes), "By",
         "Bytes of the journal not yet in the store (or the stream)"),
        ("abkit.store.up", store_up, "1", "1 when the store accepts writes, else 0"),
    ):  # fmt: skip
        meter.create_observable_gauge(
            name, callbacks=[observe(read)], unit=unit, description=description
        )


def observe_loader(meter: Meter, loader: StreamLoader) -> None:
    """The instruments of ``abkit loader``, read from its counters when the SDK collects."""

    def lag(_options: CallbackOptions) -> Iterable[Observation]:
        value = loader.stats().lag
        return [] if value is None else [Observation(value)]

    def rows(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {WRITER: kind}) for kind, n in loader.stats().written.items()]

    meter.create_observable_gauge(
        "abkit.loader.lag",
        callbacks=[lag],
        unit="{message}",
        description="Messages of the stream the loaders have not acknowledged",
    )
    meter.create_observable_counter(
        "abkit.loader.rows", callbacks=[rows], unit="{row}", description="Rows loaded"
    )
    meter.create_observable_counter(
        "abkit.loader.duplicates",
        callbacks=[lambda _o: [Observation(loader.stats().duplicates)]],
        unit="{row}",
        description="Rows found stored already (redelivered messages)",
    )
    meter.create_observable_counter(
        "abkit.loader.dead_letters",
        callbacks=[lambda _o: [Observation(loader.stats().dead_lettered)]],
        unit="{message}",
        description="Messages sent to the dead-letter subject",
    )


class WorkerMetrics:
    def __init__(self, meter: Meter) -> None:
        self.looks = meter.create_counter(
            "abkit.looks", unit="{look}", description="Looks taken by the decision worker"
        )

    def count_look(self, action: str) -> None:
        self.looks.add(1, {"abkit.action": action})
