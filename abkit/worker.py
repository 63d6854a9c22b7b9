"""``abkit worker``: looks at every running experiment on its interval and applies decisions.

Several workers may run against one PostgreSQL: each look is recorded (and acted on) by exactly
one of them (see :mod:`abkit.services.decisions`). With MLflow configured, each worker also runs
the outbox's dispatcher (:mod:`abkit.infra.outbox`), which moves the registry's aliases after a
decision and retries until they have moved. Every look is an OpenTelemetry span with the
decision as a span event, so decisions show up next to the traces of the traffic that caused
them.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import trace

from abkit.errors import AbkitError
from abkit.infra.instruments import WorkerMetrics
from abkit.infra.outbox import OutboxRunner
from abkit.services.decisions import DecisionService, LookOutcome

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        decisions: DecisionService,
        tracer: trace.Tracer,
        *,
        tick_seconds: float = 1.0,
        metrics: WorkerMetrics | None = None,
        outbox: OutboxRunner | None = None,
    ) -> None:
        """``outbox``: the registry changes' dispatcher, run every tick while the worker runs
        (and right after each decision, as a decision listener)."""
        self._decisions = decisions
        self._outbox = outbox
        self._tracer = tracer
        self._metrics = metrics
        self._tick = tick_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.looks = 0

    def run_once(self) -> list[LookOutcome]:
        """Look at every experiment that is due; the outcomes of the looks this worker took."""
        try:
            keys = self._decisions.due()
        except AbkitError as exc:
            log.warning("worker cannot list experiments (%s); retrying", exc)
            return []
        outcomes = []
        for key in keys:
            with self._tracer.start_as_current_span(
                "abkit.look", attributes={"abkit.experiment": key}
            ) as span:
                try:
                    outcome = self._decisions.look(key)
                except AbkitError as exc:
                    log.warning("look at %s failed: %s", key, exc)
                    span.record_exception(exc)
                    continue
                if outcome is None:
                    continue
                self.looks += 1
                record = outcome.record
                if self._metrics is not None:
                    self._metrics.count_look(record.action)
                span.set_attribute("abkit.look", record.look or 0)
                span.add_event(
                    "abkit.decision",
                    {
                        "abkit.experiment": key,
                        "abkit.action": record.action,
                        "abkit.arm": record.arm_key or "",
                        "abkit.reason": record.reason,
                        "abkit.look": record.look or 0,
                    },
                )
                outcomes.append(outcome)
        return outcomes

    def run(self) -> None:
        """Loop until :meth:`stop`."""
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._tick)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="abkit-worker", daemon=True)
        self._thread.start()
        if self._outbox is not None:
            self._outbox.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
