"""The outbox's dispatcher in a thread of its own: a slow or unreachable MLflow never delays a
look, a request or a command.

:class:`OutboxRunner` is a decision listener (see
:class:`abkit.services.decisions.DecisionService`): right after every terminal decision -- the
worker's, or a person's ``abkit experiment promote`` -- it runs a pass of the dispatcher
(:meth:`abkit.services.registry.RegistrySync.dispatch`). Once started (by the worker) it also
runs a pass every ``interval``: the items' own back-off decides which are due, so a change that
failed is retried until it is done, by whichever worker gets there first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from abkit.core.decision import Action
from abkit.ports import DecisionRecord, ExperimentRecord

log = logging.getLogger(__name__)


class OutboxRunner:
    """``dispatch``: one pass over the outbox (``RegistrySync.dispatch``); None when no
    registry is configured (then nothing runs)."""

    def __init__(self, dispatch: Callable[[], object] | None, *, interval: float = 1.0) -> None:
        self._dispatch = dispatch
        self._interval = interval
        self._cond = threading.Condition()
        self._requested = 0
        self._served = 0
        self._periodic = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.last_report: object = None
        self.passes = 0

    def __call__(self, record: ExperimentRecord, decision: DecisionRecord) -> None:
        if Action.terminal_name(decision.action):
            self.kick()

    def kick(self) -> None:
        """Run a pass now (in the background)."""
        if self._dispatch is None:
            return
        with self._cond:
            self._requested += 1
            self._ensure_thread()
            self._cond.notify_all()

    def start(self) -> None:
        """Also run a pass every ``interval`` (the worker), until :meth:`close`."""
        if self._dispatch is None:
            return
        with self._cond:
            self._periodic = True
            self._ensure_thread()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until a pass that began after the last :meth:`kick` has ended."""
        with self._cond:
            target = self._requested
            return self._cond.wait_for(lambda: self._served >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the pass asked for (within ``timeout``), then stop. A pass still waiting for
        MLflow is left behind: its items stay in the outbox, claimed until their lease ends,
        and the worker carries them out."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="abkit-outbox", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._served == self._requested and not self._closing:
                    self._cond.wait(self._interval if self._periodic else None)
                if self._closing:
                    return
                target = self._requested
                if target == self._served and not self._periodic:
                    continue
            try:
                self.last_report = self._dispatch() if self._dispatch is not None else None
            except Exception:  # the store is away, a bug: the next pass tries again
                log.exception("registry dispatcher pass failed")
            with self._cond:
                self.passes += 1
                self._served = max(self._served, target)
                self._cond.notify_all()
