"""``abkit.client.LocalClient``: assignment inside the caller's process, from a streamed config.

:class:`~abkit.client.Client` makes a gRPC call per assignment. ``LocalClient`` holds the
experiment config instead -- the server pushes it over ``WatchConfig`` on connect and after
every change (:mod:`abkit.rpc.config_feed`) -- and assigns with the same pure core as the
server (:mod:`abkit.core.assignment`), so it gives the same answers and reasons for a few
microseconds and no network. What the server still has to know travels in the background:

* **exposures** of randomized units (reason ``SPLIT``), deduplicated per unit and experiment in
  a bounded memory (:func:`~abkit.core.recent.recent_keys`), with the time and the caller's
  OpenTelemetry trace of the assignment, sent in batches by ``LogExposures``;
* **events** (``track``), stamped and given an id when tracked, sent by ``TrackBatch``.

A sender thread sends them every ``flush_interval``; a batch that fails for any reason but a
refusal for good (the server away, a deadline, a wrong token) is kept and retried with back-off,
in order, until it goes through (a warning when sending starts failing, another when it works
again); a batch the server refuses for good (INVALID_ARGUMENT or NOT_FOUND: say, an experiment
deleted meanwhile) is split to find the refused rows, which are dropped, counted and logged.
The queues are bounded (``max_queued`` rows each; beyond it new rows are dropped and counted --
the caller is never blocked). They are flushed by
:meth:`LocalClient.close`, at interpreter exit and on SIGTERM.

Never throws on evaluation: no config yet (the server could not be reached since start), an
unknown experiment, an invalid unit id or attribute -> the caller's default with reason
``ERROR`` and the reason why in ``error``. When the stream is down the client keeps serving the
last config it had, however old; :meth:`LocalClient.status` and the OpenTelemetry gauges
``abkit.client.config.age`` / ``abkit.client.config.stale`` say how old it is (stale: no word
from a server for more than ``stale_after`` seconds). A config that fails its checks
(:mod:`abkit.rpc.config_wire`) is refused and the last good one kept; ``status()`` says why.

Thread-safe without locks on the assignment path; every method but :meth:`close` and
:meth:`flush` returns at once, so it can be called from an asyncio loop (``await
client.aclose()`` to close from one).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import random
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from time import time_ns
from types import FrameType, TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.trace import get_current_span

from abkit.client.common import (
    AttributeValue,
    ClientAssignment,
    TrackEvent,
    call_metadata,
    describe,
    open_channel,
)
from abkit.core.assignment import Assignment, Catalog, CompiledExperiment
from abkit.core.limits import (
    MAX_BATCH,
    MAX_EXPERIMENT_KEYS,
    check_attributes,
    check_event,
    check_unit_id,
    plain_request,
    plainly_valid,
)
from abkit.core.model import Reason
from abkit.core.recent import recent_keys
from abkit.errors import ValidationError
from abkit.rpc.config_wire import FORMAT, ConfigRejected, read_update
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger("abkit.client")

_NO_ATTRIBUTES: Mapping[str, AttributeValue] = {}
_PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
"""Refusals a retry cannot change: the refused rows are dropped (and counted)."""


@dataclass(frozen=True, slots=True)
class LocalClientStatus:
    """What a :class:`LocalClient` holds and how its background work goes."""

    connected: bool
    """A config stream is open."""
    checksum: str
    """Of the config being served ("" before the first)."""
    experiments: int
    config_age_seconds: float | None
    """Since a server last confirmed the config (an update or a heartbeat); None: never."""
    stale: bool
    """No word from a server for more than ``stale_after``: the last config is still served."""
    stream_error: str | None
    """Why the last config stream failed, while it is down."""
    rejected_configs: int
    last_rejection: str | None
    """Why the last refused config was refused (the client kept the one before)."""
    exposures_queued: int
    exposures_sent: int
    exposures_dropped: int
    """Not queued because the queue was full, or refused by the server."""
    events_queued: int
    events_sent: int
    events_dropped: int


class _Config:
    """One config being served: its compiled experiments and the answers built from them."""

    __slots__ = ("answers", "catalog", "checksum", "experiments")

    def __init__(self, catalog: Catalog, checksum: str) -> None:
        self.catalog = catalog
        self.checksum = checksum
        self.experiments: dict[str, CompiledExperiment] = {c.key: c for c in catalog.resolve(())}
        # id(core answer) -> the client's answer: core answers are prebuilt per experiment,
        # arm and reason, and live as long as this config, so ids are stable.
        self.answers: dict[int, ClientAssignment] = {}

    def answer(self, a: Assignment) -> ClientAssignment:
        answer = self.answers.get(id(a))
        if answer is None:
            answer = self.answers[id(a)] = ClientAssignment(
                a.experiment_key, a.arm_key, a.model_version, a.reason, a.in_experiment
            )
        return answer


class _Queue:
    """Rows waiting to be sent: bounded, appended by callers, drained by the sender."""

    __slots__ = ("dropped", "items", "limit", "name", "sent")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.items: deque[Any] = deque()
        self.limit = limit
        self.sent = 0
        self.dropped = 0

    def drop(self, rows: int) -> None:
        """Count rows that did not fit; the client's first drop warns (``status()`` counts all)."""
        if not self.dropped:
            log.warning(
                "abkit: the %s queue is full (%d unsent); new rows are dropped and counted "
                "until it drains",
                self.name,
                self.limit,
            )
        self.dropped += rows


class LocalClient:
    """Assign locally from the streamed config; same surface and answers as ``Client``."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        flush_interval: float = 0.1,
        max_queued: int = 100_000,
        recent_exposures: int = 200_000,
        stale_after: float = 30.0,
        handle_sigterm: bool = True,
        on_config: Callable[[str], None] | None = None,
    ) -> None:
        """``timeout`` bounds each background call (sending a batch); ``on_config(checksum)``
        is called from the stream's thread after each new config is in service."""
        # Channels of its own (not shared with other channels to the same target), so that
        # clients spread over the processes of a multi-process server; reconnecting after an
        # outage within 2 s (gRPC's own back-off would grow to 2 minutes). The stream has its
        # own channel: refused by a full server process, it reconnects on a new connection,
        # which the kernel may hand to another process.
        self._open = functools.partial(
            open_channel,
            target,
            retries=2,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            options=(
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ),
        )
        self._channel = self._open()
        self._stub = pb_grpc.AssignmentServiceStub(self._channel)
        self._stream_channel = self._open()
        self._handle_sigterm = handle_sigterm
        self._refused_checksum = ""
        self._failing: str | None = None
        self._close_result: bool | None = None
        self._token = token
        self._timeout = timeout
        self._flush_interval = flush_interval
        self._stale_after = stale_after
        self._listeners: list[Callable[[str], None]] = [on_config] if on_config else []
        self._config: _Config | None = None
        self._confirmed_at: float | None = None
        self._connected = False
        self._stream_error: str | None = None
        self._rejected = 0
        self._last_rejection: str | None = None
        self._call: Any = None
        self._logged = recent_keys(recent_exposures)
        self._first_exposure = self._logged.first
        self._exposures = _Queue("exposure", max_queued)
        self._events = _Queue("event", max_queued)
        self._closed = False
        self._stopping = threading.Event()
        self._kick = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._ready = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="abkit-config", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="abkit-sender", daemon=True)
        self._watcher.start()
        self._sender.start()
        _register(self, handle_sigterm)
        _observe(self)

    # -- assignment ------------------------------------------------------------------------------

    def assign(
        self,
        unit_id: str,
        experiment_key: str,
        *,
        default: str,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> ClientAssignment:
        """The model version ``unit_id`` should get in ``experiment_key``; never raises."""
        config = self._config
        try:
            if config is None or self._closed:
                raise LookupError(_unavailable(self))
            compiled = config.experiments.get(experiment_key)
            if compiled is None:
                raise LookupError(_unknown(experiment_key))
            if plain_request(unit_id, attributes):  # the common case, one call (the hot path)
                values = attributes or _NO_ATTRIBUTES
            else:
                values = _check_unit(unit_id, attributes)
            a = compiled.assign(unit_id, values)
            if a.in_experiment and self._first_exposure(a.experiment_key, unit_id):
                self._enqueue(a, unit_id)
            return config.answers.get(id(a)) or config.answer(a)
        except Exception as exc:  # noqa: BLE001 -- evaluation never throws
            return _default(experiment_key, default, exc)

    def assign_many(
        self,
        unit_id: str,
        defaults: Mapping[str, str],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> dict[str, ClientAssignment]:
        """One assignment per experiment in ``defaults`` (key -> default version); never raises.

        Like the server's ``Assign`` of several keys: the unit is checked once, and one unknown
        key makes every answer the caller's default (reason ``ERROR``)."""
        config = self._config
        try:
            if config is None or self._closed:
                raise LookupError(_unavailable(self))
            if len(defaults) > MAX_EXPERIMENT_KEYS:
                raise LookupError(
                    f"INVALID_ARGUMENT: experiment_keys: at most {MAX_EXPERIMENT_KEYS} keys, "
                    f"got {len(defaults)}"
                )
            known = config.experiments
            missing = [k for k in defaults if k not in known]
            if missing:
                raise LookupError(_unknown(missing[0]))
            values = _check_unit(unit_id, attributes)
            first, answers = self._first_exposure, config.answers
            fresh: list[Assignment] = []
            result = {}
            try:
                for key in defaults:  # what assign() does, inline: this loop is the hot path
                    a = known[key].assign(unit_id, values)
                    if a.in_experiment and first(a.experiment_key, unit_id):
                        fresh.append(a)
                    result[key] = answers.get(id(a)) or config.answer(a)
            finally:  # a pair remembered as sent is queued, even if a later key failed
                if fresh:
                    self._enqueue_many(fresh, unit_id)
            return result
        except Exception as exc:  # noqa: BLE001 -- evaluation never throws
            return {key: _default(key, default, exc) for key, default in defaults.items()}

    def _enqueue(self, a: Assignment, unit_id: str) -> None:
        """Queue the exposure of a unit's first randomized answer, stamped with the time and the
        caller's trace (none: no context at all, the common case without a tracing SDK)."""
        queue = self._exposures
        if len(queue.items) >= queue.limit:
            queue.drop(1)
            return
        trace_id, span_id = _trace_ids() if _context() else _NO_TRACE
        # Strings and ints only: the tuple is soon untracked by the garbage collector, so a long
        # queue does not slow every collection down (an answer object in it would).
        queue.items.append(
            (a.experiment_key, a.arm_key, a.model_version, a.config_checksum, unit_id,
             time_ns(), trace_id, span_id)
        )  # fmt: skip

    def _enqueue_many(self, answers: Sequence[Assignment], unit_id: str) -> None:
        """:meth:`_enqueue` for several answers of one unit: one stamp; what fits is queued."""
        queue = self._exposures
        room = max(queue.limit - len(queue.items), 0)
        if room < len(answers):
            queue.drop(len(answers) - room)
            answers = answers[:room]
            if not answers:
                return
        at = time_ns()
        trace_id, span_id = _trace_ids() if _context() else _NO_TRACE
        queue.items.extend(
            (a.experiment_key, a.arm_key, a.model_version, a.config_checksum, unit_id, at,
             trace_id, span_id)
            for a in answers
        )  # fmt: skip

    def track(
        self,
        unit_id: str,
        metric: str,
        value: float = 1.0,
        *,
        occurred_at: datetime | None = None,
        event_id: str = "",
    ) -> bool:
        """Queue one KPI event (sent in the background); False, and logged, when it is invalid
        or the queue is full. Never raises."""
        return self.track_many([TrackEvent(unit_id, metric, value, occurred_at, event_id)])

    def track_many(self, events: Sequence[TrackEvent]) -> bool:
        """Queue a batch, all or nothing; False, and logged, when one is invalid. Never raises."""
        try:
            if self._closed:
                raise LookupError("the client is closed")
            now = datetime.now(UTC)
            requests = [_track_request(e, now, f"events[{i}].") for i, e in enumerate(events)]
            queue = self._events
            if len(queue.items) + len(requests) > queue.limit:
                queue.dropped += len(requests)
                raise LookupError(f"the event queue is full ({queue.limit} events unsent)")
            queue.items.extend(requests)
            return True
        except Exception as exc:  # noqa: BLE001 -- tracking never throws
            log.warning("abkit track refused %d events (%s)", len(events), describe(exc))
            return False

    # -- the config stream -----------------------------------------------------------------------

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(checksum)`` (from the stream's thread) after each new config."""
        self._listeners.append(listener)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a config is in service (or ``timeout``); True when one is."""
        return self._ready.wait(timeout)

    def _watch(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                held = self._config.checksum if self._config is not None else ""
                call = pb_grpc.AssignmentServiceStub(self._stream_channel).WatchConfig(
                    pb.WatchConfigRequest(known_checksum=held),
                    metadata=call_metadata(self._token),
                )
                self._call = call
                if self._stopping.is_set():
                    call.cancel()
                for update in call:
                    self._connected = True
                    self._stream_error = None
                    delay = 0.05
                    if not self._receive(update):
                        call.cancel()  # out of step with the server: resume from scratch
                        break
                else:
                    self._stream_error = "the server ended the stream (shutting down)"
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    break
                self._stream_error = describe(exc)
                log.debug("abkit config stream failed: %s", self._stream_error)
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # This server process holds its most streams: a new connection, which the
                    # kernel may hand to another process of the server (or another replica).
                    old, self._stream_channel = self._stream_channel, self._open()
                    old.close()
            except Exception as exc:
                self._stream_error = describe(exc)
                log.exception("abkit config stream failed")
            self._connected = False
            # Jittered back-off: a restarted server is not hit by every client at once.
            self._stopping.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def _receive(self, update: Any) -> bool:
        """Take one message; False when it asks for a resume from scratch."""
        config = self._config
        if not update.full and update.format == FORMAT:
            if config is not None and update.checksum == config.checksum:
                self._confirmed_at = time.monotonic()
                return True
            if update.checksum == self._refused_checksum:
                return True  # the server still has the config refused before: keep waiting
            self._reject(
                f"checksum: a heartbeat names config {update.checksum[:12]!r}, this client "
                f"holds {config.checksum[:12] if config else 'none'!r}"
            )
            return False
        try:
            catalog = Catalog(read_update(update))
        except (ConfigRejected, ValidationError) as exc:
            self._refused_checksum = update.checksum
            self._reject(str(exc))
            return True
        except Exception as exc:  # noqa: BLE001 -- e.g. RecursionError on absurd nesting
            self._refused_checksum = update.checksum
            self._reject(f"the config could not be read: {describe(exc)}")
            return True
        self._config = _Config(catalog, update.checksum)
        self._confirmed_at = time.monotonic()
        self._ready.set()
        for listener in tuple(self._listeners):
            try:
                listener(update.checksum)
            except Exception:  # the caller's callback must not end the stream
                log.exception("abkit: a config listener failed")
        return True

    def _reject(self, why: str) -> None:
        self._rejected += 1
        self._last_rejection = why
        log.warning("abkit refused a config from the server, keeping the last good one: %s", why)

    # -- sending ---------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        backoff = 0.0
        while True:
            stopping = self._stopping.is_set()
            self._kick.wait(max(self._flush_interval, backoff))
            self._kick.clear()
            ok = self._send_all()
            backoff = 0.0 if ok else min(max(backoff * 2, 0.1), 5.0)
            with self._idle:
                self._idle.notify_all()
            if stopping:
                return

    def _send_all(self) -> bool:
        ok = self._send(self._exposures, _exposure_batch, self._stub.LogExposures)
        return self._send(self._events, _event_batch, self._stub.TrackBatch) and ok

    def _send(
        self, queue: _Queue, build: Callable[[list[Any]], Any], method: Callable[..., Any]
    ) -> bool:
        """Send what is queued, in batches, oldest first; False when the server is away (what
        could not be sent stays at the head of the queue)."""
        items = queue.items
        while items:
            self._in_flight = size = min(len(items), MAX_BATCH)  # before popping: see flush()
            batch = [items.popleft() for _ in range(size)]
            try:
                queue.sent += self._deliver(batch, build, method, queue)
            except Exception as exc:  # noqa: BLE001 -- not refused for good: keep them, retry
                items.extendleft(reversed(batch))
                why = describe(exc)
                if self._failing is None:
                    log.warning(
                        "abkit: cannot send to the server (%s); %d rows wait and are retried",
                        why,
                        len(items),
                    )
                self._failing = why
                return False
            finally:
                self._in_flight = 0
            if self._failing is not None:  # a batch went through: the server takes rows again
                log.warning("abkit: sending to the server again (it failed: %s)", self._failing)
                self._failing = None
        return True

    def _deliver(
        self,
        batch: list[Any],
        build: Callable[[list[Any]], Any],
        method: Callable[..., Any],
        queue: _Queue,
    ) -> int:
        """Rows sent; rows refused for good are dropped here. Raises for a retryable failure."""
        try:
            method(build(batch), timeout=self._timeout, metadata=call_metadata(self._token))
            return len(batch)
        except grpc.RpcError as exc:
            if exc.code() not in _PERMANENT:
                raise
            if len(batch) == 1:
                queue.dropped += 1
                log.error("abkit: the server refused a row for good, dropped: %s", describe(exc))
                return 0
        half = len(batch) // 2  # find the refused rows by halves
        return self._deliver(batch[:half], build, method, queue) + self._deliver(
            batch[half:], build, method, queue
        )

    def _pending(self) -> int:
        return len(self._exposures.items) + len(self._events.items) + self._in_flight

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything queued now; True when nothing is left within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sender.is_alive():
                    return False
                self._kick.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    # -- state -----------------------------------------------------------------------------------

    def status(self) -> LocalClientStatus:
        config = self._config
        confirmed = self._confirmed_at
        age = None if confirmed is None else time.monotonic() - confirmed
        return LocalClientStatus(
            connected=self._connected,
            checksum=config.checksum if config is not None else "",
            experiments=len(config.experiments) if config is not None else 0,
            config_age_seconds=age,
            stale=age is None or age > self._stale_after,
            stream_error=None if self._connected else self._stream_error,
            rejected_configs=self._rejected,
            last_rejection=self._last_rejection,
            exposures_queued=len(self._exposures.items),
            exposures_sent=self._exposures.sent,
            exposures_dropped=self._exposures.dropped,
            events_queued=len(self._events.items),
            events_sent=self._events.sent,
            events_dropped=self._events.dropped,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> bool:
        """Stop assigning, send what is queued (up to ``timeout``), close the channels. True
        when everything queued was sent."""
        if self._close_result is not None or self._closed:
            return bool(self._close_result)
        self._closed = True
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._stopping.set()
        self._kick.set()
        if self._call is not None:
            self._call.cancel()
        current = threading.current_thread()
        for thread in (self._sender, self._watcher):
            if thread is not current:  # close() from an on_config listener: the watcher itself
                thread.join(max(deadline - time.monotonic(), 0.1))
        if self._pending() and not self._sender.is_alive():
            # A caller that assigned while close() began may have queued after the sender's
            # last pass: one more, from here.
            self._send_all()
            flushed = not self._pending()
        self._channel.close()
        self._stream_channel.close()
        _OPEN.discard(self)
        self._close_result = flushed
        if not flushed:
            log.error(
                "abkit: closed with %d exposures and %d events unsent (server unreachable)",
                len(self._exposures.items),
                len(self._events.items),
            )
        return flushed

    async def aclose(self, timeout: float = 5.0) -> bool:
        """:meth:`close` without blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- helpers -------------------------------------------------------------------------------------


def _default(key: str, default: str, exc: BaseException) -> ClientAssignment:
    reason = exc.args[0] if isinstance(exc, LookupError) and exc.args else describe(exc)
    return ClientAssignment(key, "", default, Reason.ERROR, False, str(reason))


_NO_TRACE = (0, 0)


def _trace_ids() -> tuple[int, int]:
    ids = get_current_span().get_span_context()
    return ids.trace_id, ids.span_id


def _context_reader() -> Callable[[], object]:
    """The current OpenTelemetry context, read as cheaply as the installed API allows: the
    runtime context's own ``ContextVar.get`` (a C call, 20 ns) when it is the default
    contextvars one, else the public ``get_current`` (two Python calls, 60 ns). Empty (falsy)
    when nothing was ever attached: no trace to stamp, no span to look up."""
    var = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if not isinstance(var, ContextVar):
        return otel_context.get_current
    try:
        var.get()  # a default (the empty context) is what makes the bare get safe
    except LookupError:
        return otel_context.get_current
    return var.get


_context = _context_reader()


def _check_unit(
    unit_id: str, attributes: Mapping[str, AttributeValue] | None
) -> Mapping[str, AttributeValue]:
    """The server's checks of a unit and its attributes (the common case in one C call); the
    attributes as the server would see them after the wire."""
    if plain_request(unit_id, attributes):
        return attributes or _NO_ATTRIBUTES
    check_unit_id(unit_id)
    if not attributes:
        return _NO_ATTRIBUTES
    if plainly_valid(attributes):
        return attributes
    check_attributes(attributes)
    return {name: _as_sent(value) for name, value in attributes.items()}


def _as_sent(value: AttributeValue) -> AttributeValue:
    """A value as it arrives through ``AttributeValue``: a ``str`` subclass (an enum) as a plain
    string, another number as a float."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    return float(value)


def _unavailable(client: LocalClient) -> str:
    if client._closed:
        return "the client is closed"
    why = client._stream_error or "connecting"
    return f"no experiment config yet ({why}); serving the default"


def _unknown(key: str) -> str:
    return f"NOT_FOUND: experiment {key!r} is not in the config this client holds"


def _track_request(event: TrackEvent, now: datetime, where: str) -> Any:
    value, occurred_at, event_id = check_event(
        event.unit_id, event.metric, event.value, event.occurred_at, event.event_id, now, where
    )
    event_id = event_id or os.urandom(16).hex()  # retries stay idempotent
    request = pb.TrackRequest(
        unit_id=event.unit_id, metric=event.metric, value=value, event_id=event_id
    )
    request.occurred_at.FromDatetime(occurred_at)
    return request


def _exposure_batch(rows: list[Any]) -> Any:
    """Rows grouped by the answer they share, each group's columns filled in one call."""
    groups: dict[tuple[str, str, str, str], list[Any]] = {}
    for row in rows:
        head = row[:4]
        group = groups.get(head)
        if group is None:
            groups[head] = [row]
        else:
            group.append(row)
    request = pb.LogExposuresRequest()
    for (key, arm, version, checksum), members in groups.items():
        _, _, _, _, units, times, traces, spans = zip(*members, strict=True)
        group = request.groups.add(
            experiment_key=key, arm_key=arm, model_version=version, config_checksum=checksum
        )
        group.unit_ids.extend(units)
        group.exposed_at_unix_nanos.extend(times)
        if any(traces):
            group.trace_ids.extend([f"{t:032x}" if t else "" for t in traces])
            group.span_ids.extend([f"{s:016x}" if s else "" for s in spans])
    return request


def _event_batch(rows: list[Any]) -> Any:
    return pb.TrackBatchRequest(events=rows)


# -- process exit and SIGTERM: flush every open client ---------------------------------------------

_OPEN: weakref.WeakSet[LocalClient] = weakref.WeakSet()
_EXIT_TIMEOUT = 5.0
_atexit_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


def _register(client: LocalClient, handle_sigterm: bool) -> None:
    """Flush at exit, always; on SIGTERM, the clients that asked -- the handler is installed by
    the first such client made in the main thread (Python runs signal handlers there only)."""
    global _atexit_installed, _sigterm_installed, _previous_sigterm
    _OPEN.add(client)
    if not _atexit_installed:
        _atexit_installed = True
        atexit.register(_close_all)
    if (
        handle_sigterm
        and not _sigterm_installed
        and threading.current_thread() is threading.main_thread()
    ):
        _sigterm_installed = True
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _close_all() -> None:
    deadline = time.monotonic() + _EXIT_TIMEOUT
    for client in list(_OPEN):
        client.close(max(deadline - time.monotonic(), 0.1))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Send what the clients queued (within one shared deadline), then do what SIGTERM did
    before (by default: exit)."""
    deadline = time.monotonic() + _EXIT_TIMEOUT
    for client in list(_OPEN):
        if client._handle_sigterm:
            client.flush(max(deadline - time.monotonic(), 0.1))
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# -- metrics -------------------------------------------------------------------------------------

_WATCHED: weakref.WeakSet[LocalClient] = weakref.WeakSet()
_gauges_created = False


def _observe(client: LocalClient) -> None:
    """``abkit.client.config.age`` (s), ``abkit.client.config.stale`` (0/1) and
    ``abkit.client.queued`` (rows) through the caller's OpenTelemetry meter provider."""
    global _gauges_created
    _WATCHED.add(client)
    if _gauges_created:
        return
    _gauges_created = True
    meter = metrics.get_meter("abkit.client")

    def age(options: metrics.CallbackOptions) -> list[metrics.Observation]:
        statuses = [c.status() for c in list(_WATCHED)]
        return [
            metrics.Observation(s.config_age_seconds)
            for s in statuses
            if s.config_age_seconds is not None
        ]

    def stale(options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(int(c.status().stale)) for c in list(_WATCHED)]

    def queued(options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [
            metrics.Observation(s.exposures_queued + s.events_queued)
            for s in (c.status() for c in list(_WATCHED))
        ]

    meter.create_observable_gauge(
        "abkit.client.config.age", [age], unit="s", description="Age of the served config"
    )
    meter.create_observable_gauge(
        "abkit.client.config.stale",
        [stale],
        description="1 while the served config has not been confirmed for stale_after seconds",
    )
    meter.create_observable_gauge(
        "abkit.client.queued", [queued], description="Exposures and events not yet sent"
    )
