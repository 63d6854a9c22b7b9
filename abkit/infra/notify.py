"""Decision notifications: a webhook per experiment, never blocking the worker.

An experiment's policy may name a ``webhook``. On promote, rollback, stop and hold, a JSON body
is POSTed to it from a background thread, retried with exponential back-off on connection errors
and 5xx answers (``attempts`` tries, waiting 1, 2, 4, ... seconds). The worker only appends to a
bounded queue; when the queue is full the oldest notification is dropped and counted. A hold is
sent once per run of holds, not at every look.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from abkit.ports import DecisionRecord, ExperimentRecord

log = logging.getLogger(__name__)

NOTIFIED_ACTIONS = frozenset({"promote", "rollback", "hold", "stop_inconclusive"})


@dataclass(frozen=True, slots=True)
class Notification:
    url: str
    body: dict[str, Any]


def payload(record: ExperimentRecord, decision: DecisionRecord) -> dict[str, Any]:
    experiment = record.experiment
    arm = experiment.arm(decision.arm_key) if decision.arm_key else None
    return {
        "experiment": experiment.key,
        "name": experiment.name,
        "action": decision.action,
        "arm": decision.arm_key,
        "model": experiment.model,
        "model_version": arm.model_version if arm else None,
        "reason": decision.reason,
        "actor": decision.actor,
        "look": decision.look,
        "decided_at": decision.decided_at.isoformat(),
        "status": experiment.status.value,
    }


Sender = Callable[[Notification], None]


def _post(notification: Notification, timeout: float = 5.0) -> None:
    request = urllib.request.Request(  # noqa: S310 -- the URL scheme is validated as http(s)
        notification.url,
        data=json.dumps(notification.body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "abkit-webhook"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read()


class WebhookNotifier:
    """A decision listener (see :class:`abkit.services.decisions.DecisionService`) that posts
    webhooks."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        first_delay: float = 1.0,
        queue_size: int = 1000,
        send: Sender = _post,
    ) -> None:
        self._attempts = attempts
        self._first_delay = first_delay
        self._queue: deque[Notification] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._send = send
        self._closing = False
        self._last_action: dict[str, str] = {}
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="abkit-webhooks", daemon=True)
        self._thread.start()

    def __call__(self, record: ExperimentRecord, decision: DecisionRecord) -> None:
        url = record.policy.webhook if record.policy is not None else None
        previous = self._last_action.get(record.key)
        self._last_action[record.key] = decision.action
        if not url or decision.action not in NOTIFIED_ACTIONS:
            return
        if decision.action == "hold" and previous == "hold":
            return
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(Notification(url, payload(record, decision)))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                notification = self._queue.popleft()
                self._busy = True
            self._deliver(notification)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _deliver(self, notification: Notification) -> None:
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            try:
                self._send(notification)
            except urllib.error.HTTPError as exc:
                exc.close()  # an HTTPError is also the (open) response
                if exc.code < 500:  # the receiver refuses it: retrying will not help
                    log.error("webhook %s refused: HTTP %s", notification.url, exc.code)
                    self.failed += 1
                    return
                error: Exception = exc
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                error = exc
            else:
                self.sent += 1
                return
            if attempt < self._attempts:
                log.warning(
                    "webhook %s failed (%s), retrying in %.1f s", notification.url, error, delay
                )
                time.sleep(delay)
                delay *= 2
        log.error("webhook %s failed %d times; giving up", notification.url, self._attempts)
        self.failed += 1

    def flush(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
