"""The stream: a NATS JetStream stream that carries exposures and events past one machine.

With ``ABKIT_STREAM_URL`` set, ``abkit grpc`` publishes what it accepts to the stream instead
of writing the database (:mod:`abkit.infra.stream_recorder`), and any number of
``abkit loader`` processes copy the stream into the store (:mod:`abkit.infra.loader`).

**Stream** (created or updated idempotently by every server and loader at start): name
``ABKIT_STREAM_NAME`` (default ``ABKIT``), subjects ``<prefix>.rows.>`` (the rows) and
``<prefix>.dead.>`` (the dead letters), file storage, limits retention, ``ABKIT_STREAM_REPLICAS``
replicas, ``ABKIT_STREAM_MAX_AGE`` and ``ABKIT_STREAM_MAX_BYTES``, a 2-minute duplicate window.

**Messages** (schema 1): subject ``<prefix>.rows.exposures`` or ``<prefix>.rows.events``; the
body is the rows as :mod:`abkit.core.rows` text (many rows a message: everything one group
commit of a server holds, up to ``MAX_MESSAGE_BYTES``); headers:

==================  ===========================================================================
``Nats-Msg-Id``     ``<server instance>-<sequence>``: JetStream stores a retried publish once
``Abkit-Schema``    ``1``; a loader dead-letters any other version rather than guess
``Abkit-Kind``      ``exposures`` or ``events`` (as the subject)
``Abkit-Rows``      the number of rows in the body (checked on decode)
==================  ===========================================================================

Dead letters go to ``<prefix>.dead.<kind>`` with the original body and an ``Abkit-Reason``.

**Ports.** The servers publish through a :class:`Publisher` and the loaders read through a
:class:`Consumer` of :class:`Delivery` s; :class:`StreamClient` and :class:`NatsConsumer` are the
NATS adapters, and nothing else in abkit imports ``nats``.

**Kafka** would be an adapter of the same two ports: a topic per kind (``abkit.rows.exposures``,
``abkit.rows.events``) keyed by the server instance (per-process order), an idempotent producer
(``enable.idempotence=true``, ``acks=all``; the message id as a header for the loaders' logs,
since Kafka deduplicates by producer sequence rather than by id), a consumer group of loaders
committing offsets only after the store commit (``enable.auto.commit=false``), a
``abkit.dead`` topic for the dead letters and the group's lag (log-end minus committed offset)
for :meth:`Consumer.lag`. No Kafka broker is reachable where abkit is tested, so none is
shipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from abkit.core.limits import (
    check_event_id,
    check_metric,
    check_unit_id,
    check_value,
)
from abkit.core.model import check_key
from abkit.core.rows import RowKind, decode_events, decode_exposures
from abkit.errors import AbkitError, ValidationError

log = logging.getLogger(__name__)

SCHEMA = "1"
MAX_MODEL_VERSION = 128  # the exposures.model_version column
MAX_CHECKSUM = 16  # the exposures.config_checksum column
MAX_MESSAGE_BYTES = 512 * 1024
DUPLICATE_WINDOW_SECONDS = 120.0
KIND_NAMES = {RowKind.EXPOSURES: "exposures", RowKind.EVENTS: "events"}
KINDS = {name: kind for kind, name in KIND_NAMES.items()}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Where the stream is and what it is (from :class:`abkit.config.Settings`)."""

    servers: tuple[str, ...]
    name: str = "ABKIT"
    prefix: str = "abkit"
    replicas: int = 1
    max_age_seconds: int = 7 * 86400
    max_bytes: int = 10 << 30
    publish_timeout: float = 2.0

    def subject(self, kind: RowKind) -> str:
        return f"{self.prefix}.rows.{KIND_NAMES[kind]}"

    def dead_subject(self, kind_name: str) -> str:
        safe = kind_name if kind_name in KINDS else "unknown"
        return f"{self.prefix}.dead.{safe}"

    @property
    def rows_subjects(self) -> str:
        return f"{self.prefix}.rows.>"


class Publisher(Protocol):
    """What a server's :class:`~abkit.infra.stream_recorder.StreamSink` publishes through."""

    settings: StreamSettings
    connected: threading.Event

    def publish(
        self, kind: RowKind, body: bytes, rows: int, msg_id: str
    ) -> concurrent.futures.Future[Any]:
        """Publish one message; the future completes when the stream has stored it."""
        ...


class Delivery(Protocol):
    """A message handed to a loader."""

    @property
    def headers(self) -> dict[str, str] | None: ...

    @property
    def data(self) -> bytes: ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...


class Consumer(Protocol):
    """What a :class:`~abkit.infra.loader.StreamLoader` reads through (one shared durable
    consumer: each message goes to one loader, until it acknowledges it)."""

    async def open(self) -> None: ...

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; ``[]`` when none arrived within ``timeout``."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the message to the dead letters with ``reason``, then acknowledge it."""
        ...

    async def lag(self) -> int:
        """Messages not yet acknowledged by any loader."""
        ...


class PoisonMessage(AbkitError):
    """A message no loader can store: it goes to the dead letters with this reason."""


@dataclass(frozen=True, slots=True)
class Decoded:
    kind: RowKind
    text: str
    rows: int


def headers(kind: RowKind, rows: int, msg_id: str) -> dict[str, str]:
    return {
        "Nats-Msg-Id": msg_id,
        "Abkit-Schema": SCHEMA,
        "Abkit-Kind": KIND_NAMES[kind],
        "Abkit-Rows": str(rows),
    }


def decode(message_headers: dict[str, str] | None, body: bytes) -> Decoded:
    """A message's rows, checked: the schema, the kind, the row count and every value (the
    same limits the gRPC edge enforces). Raises :class:`PoisonMessage` naming what is wrong."""
    h = message_headers or {}
    schema = h.get("Abkit-Schema")
    if schema != SCHEMA:
        raise PoisonMessage(f"unknown schema version {schema!r} (this loader reads {SCHEMA})")
    kind = KINDS.get(h.get("Abkit-Kind", ""))
    if kind is None:
        raise PoisonMessage(f"unknown kind {h.get('Abkit-Kind')!r}")
    try:
        declared = int(h.get("Abkit-Rows", ""))
        text = body.decode()
    except ValueError as exc:
        raise PoisonMessage(f"undecodable message: {exc}") from None
    try:
        rows = _checked_rows(kind, text)
    except (ValueError, ValidationError) as exc:
        raise PoisonMessage(f"a row is invalid: {exc}") from None
    if rows != declared:
        raise PoisonMessage(f"{rows} rows in the body, {declared} declared (truncated?)")
    return Decoded(kind, text, rows)


_HEX = frozenset("0123456789abcdef")


def _check_trace(trace_id: str, span_id: str) -> None:
    for value, size, name in ((trace_id, 32, "trace_id"), (span_id, 16, "span_id")):
        if value and (len(value) != size or not _HEX.issuperset(value)):
            raise ValidationError(name, f"must be empty or {size} lower-case hex digits")


def _checked_rows(kind: RowKind, text: str) -> int:
    """Every row of ``text`` checked against the limits the gRPC edge and the schema enforce.
    The columns rows of one request or one answer share are checked once per distinct value."""
    seen: set[tuple[str, ...]] = set()
    if kind is RowKind.EXPOSURES:
        exposures = decode_exposures(text)
        for e in exposures:
            shared = (e.experiment_key, e.arm_key, e.model_version, e.config_checksum,
                      e.trace_id, e.span_id)  # fmt: skip
            if shared not in seen:
                _check_exposure_columns(*shared)
                seen.add(shared)
            check_unit_id(e.unit_id, "unit_id")
        return len(exposures)
    events = decode_events(text)
    for v in events:
        check_event_id(v.event_id, "event_id")
        check_unit_id(v.unit_id, "unit_id")
        check_value(v.value, "value")
        if (v.metric, v.trace_id, v.span_id) not in seen:
            check_metric(v.metric, "metric")
            _check_trace(v.trace_id, v.span_id)
            seen.add((v.metric, v.trace_id, v.span_id))
    return len(events)


def _check_exposure_columns(
    key: str, arm: str, version: str, checksum: str, trace_id: str, span_id: str
) -> None:
    check_key(key, "experiment_key")
    check_key(arm, "arm_key")
    if not version or len(version) > MAX_MODEL_VERSION:
        raise ValidationError("model_version", f"must be 1-{MAX_MODEL_VERSION} characters")
    if not 0 < len(checksum) <= MAX_CHECKSUM:
        raise ValidationError("config_checksum", f"must be 1-{MAX_CHECKSUM} characters")
    _check_trace(trace_id, span_id)


class StreamClient:
    """A NATS connection on an asyncio loop of its own thread, for synchronous callers.

    Reconnects forever; :meth:`call` runs a coroutine on the loop and returns a future. Calls
    made while NATS is away fail or time out: callers fall back (the recorder to its journal,
    the loader waits).
    """

    def __init__(self, settings: StreamSettings, name: str, *, ensure: bool = True) -> None:
        self.settings = settings
        self._name = name
        self._ensure = ensure
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"abkit-{name}")
        self._thread.daemon = True
        self.nc: Any = None
        self.js: Any = None
        self.connected = threading.Event()

    def start(self, wait: float = 5.0) -> bool:
        """Connect (and make sure the stream exists) in the background, retrying until NATS
        answers; True when connected within ``wait`` seconds. Callers that cannot wait for NATS
        (a server: it falls back to its journal) go on either way."""
        self._thread.start()
        self.call(self._connect_forever())
        return self.connected.wait(wait)

    def _servers(self) -> str:
        return ",".join(self.settings.servers)

    async def _connect_forever(self) -> None:
        warned = False
        while self.nc is None:
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 -- nats-py raises its own tree; retry
                if not warned:
                    log.warning("%s: NATS at %s unreachable (%s); retrying", self._name,
                                self._servers(), exc)  # fmt: skip
                    warned = True
                self.nc = None
                await asyncio.sleep(0.5)

    async def _connect(self) -> None:
        import nats

        async def disconnected() -> None:
            self.connected.clear()
            log.warning("%s: disconnected from NATS", self._name)

        async def reconnected() -> None:
            self.connected.set()
            log.warning("%s: reconnected to NATS", self._name)

        async def error(exc: Exception) -> None:
            log.debug("%s: NATS: %s", self._name, exc)

        nc = await nats.connect(
            list(self.settings.servers),
            name=self._name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        js = nc.jetstream()
        try:
            if self._ensure:
                await ensure_stream(js, self.settings)
        except Exception:
            await nc.close()
            raise
        self.nc, self.js = nc, js
        self.connected.set()

    async def _shutdown(self) -> None:
        """Close the connection and cancel what still runs on the loop (a connect retry)."""
        if self.nc is not None:
            await self.nc.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def publish(
        self, kind: RowKind, body: bytes, rows: int, msg_id: str
    ) -> concurrent.futures.Future[Any]:
        return self.call(self._publish(kind, body, rows, msg_id))

    async def _publish(self, kind: RowKind, body: bytes, rows: int, msg_id: str) -> Any:
        return await self.js.publish(
            self.settings.subject(kind),
            body,
            timeout=self.settings.publish_timeout,
            headers=headers(kind, rows, msg_id),
        )

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            try:
                self.call(self._shutdown()).result(timeout)
            except Exception as exc:  # noqa: BLE001 -- closing; nothing left to protect
                log.debug("%s: closing NATS: %s", self._name, exc)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


async def ensure_stream(js: Any, settings: StreamSettings) -> None:
    """Create the stream, or update it to these settings (idempotent: every process runs it)."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    config = StreamConfig(
        name=settings.name,
        description="abkit exposures and events",
        subjects=[settings.rows_subjects, f"{settings.prefix}.dead.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=float(settings.max_age_seconds),
        max_bytes=settings.max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )
    try:
        await js.stream_info(settings.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("created the JetStream stream %s (%d replicas)", settings.name, settings.replicas)
        return
    await js.update_stream(config)


class NatsConsumer:
    """The loaders' :class:`Consumer` on JetStream: a durable pull consumer of the rows
    subjects, explicit acknowledgements, redelivery after ``ack_wait``, never given up."""

    def __init__(
        self, client: StreamClient, durable: str, batch: int, ack_wait: float = 30.0
    ) -> None:
        self._client = client
        self._durable = durable
        self._batch = batch
        self._ack_wait = ack_wait
        self._subscription: Any = None

    async def open(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        settings = self._client.settings
        self._subscription = await self._client.js.pull_subscribe(
            settings.rows_subjects,
            durable=self._durable,
            stream=settings.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait,
                max_deliver=-1,
                max_ack_pending=self._batch * 64,
                filter_subject=settings.rows_subjects,
            ),
        )

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        import nats.errors

        try:
            return list(await self._subscription.fetch(batch, timeout=timeout))
        except (TimeoutError, nats.errors.TimeoutError):
            return []

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        settings = self._client.settings
        original = delivery.headers or {}
        sequence = _stream_sequence(delivery)
        dead = {k: v for k, v in original.items() if k != "Nats-Msg-Id"}
        dead["Abkit-Reason"] = reason[:1000]
        dead["Nats-Msg-Id"] = f"dead-{settings.name}-{sequence}"
        await self._client.js.publish(
            settings.dead_subject(original.get("Abkit-Kind", "unknown")),
            delivery.data,
            headers=dead,
            timeout=5,
        )
        await delivery.ack()

    async def lag(self) -> int:
        return await consumer_lag(self._client, self._durable)


def _stream_sequence(delivery: Delivery) -> int:
    return int(getattr(delivery, "metadata").sequence.stream)  # noqa: B009 -- NATS only


async def consumer_lag(client: StreamClient, durable: str) -> int:
    """Messages the loaders' consumer has not acknowledged yet (``abkit health loader``)."""
    info = await client.js.consumer_info(client.settings.name, durable)
    return int(info.num_pending) + int(info.num_ack_pending)
