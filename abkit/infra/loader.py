"""``abkit loader``: the stream's way into the database.

A durable JetStream pull consumer (``ABKIT_LOADER_DURABLE``, default ``abkit-loader``) that any
number of loader processes share -- JetStream hands each message to one of them, so loading
scales out by adding processes. Each fetched batch is decoded and checked
(:func:`abkit.infra.stream.decode`), written to the store in one transaction (PostgreSQL
copies each kind's text as it is), and acknowledged **only after the commit**: a loader killed
in the middle of a batch leaves it unacknowledged, JetStream redelivers it after ``ack_wait``,
and the store's idempotent inserts keep every row once.

**Poison messages** (undecodable bytes, a truncated body, an unknown schema version, an invalid
value -- NaN, a 1 MB unit id) are published to the dead-letter subject with an
``Abkit-Reason`` header, counted and acknowledged: they never block the stream. A value the
store itself refuses is isolated the same way (the batch is retried message by message).

**Store outage**: the batch is negatively acknowledged with a delay (redelivered later), the
loader backs off; JetStream keeps the rows (up to its limits).

Lag -- messages in the stream not yet acknowledged by the loaders -- is read every few seconds
(:attr:`StreamLoader.lag`), exported as the OpenTelemetry gauge ``abkit.loader.lag`` and checked
by ``abkit health loader``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from abkit.config import Settings
from abkit.core.rows import RowKind
from abkit.errors import StoreUnavailableError
from abkit.infra.drain import write_rows
from abkit.infra.stream import (
    KIND_NAMES,
    Consumer,
    Decoded,
    Delivery,
    NatsConsumer,
    PoisonMessage,
    StreamClient,
    consumer_lag,
    decode,
)
from abkit.ports import Store

log = logging.getLogger(__name__)

LAG_EVERY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class LoaderStats:
    messages: int
    written: dict[str, int]
    duplicates: int
    dead_lettered: int
    redelivered_batches: int
    lag: int | None


class StreamLoader:
    """Fetch, check, write, commit, acknowledge -- on the stream client's event loop, with the
    (synchronous) store called from a worker thread."""

    def __init__(
        self,
        client: StreamClient,
        store: Store,
        *,
        durable: str = "abkit-loader",
        batch: int = 256,
        ack_wait: float = 30.0,
        max_backoff: float = 5.0,
        consumer: Consumer | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._batch = batch
        self._consumer = consumer or NatsConsumer(client, durable, batch, ack_wait)
        self._max_backoff = max_backoff
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._messages = 0
        self._written = {RowKind.EXPOSURES: 0, RowKind.EVENTS: 0}
        self._duplicates = 0
        self._dead = 0
        self._redelivered = 0
        self.lag: int | None = None
        self.down = False

    def start(self) -> None:
        self._client.call(self._run())

    def stop(self, timeout: float = 30.0) -> bool:
        """Finish the batch in hand (written and acknowledged), then stop."""
        self._stopping.set()
        return self._done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """:meth:`stop`, then close the NATS connection (a loader from :func:`open_loader`)."""
        stopped = self.stop(timeout)
        self._client.close()
        return stopped

    async def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._client.connected.is_set():
                    try:
                        await self._consumer.open()
                        break
                    except Exception as exc:  # noqa: BLE001 -- NATS not ready: retry
                        log.warning("loader: cannot open the consumer yet: %s", exc)
                await asyncio.sleep(0.5)
            await self._consume()
        except Exception:
            log.exception("loader: stopped by an unexpected error")
            raise
        finally:
            self._done.set()

    async def _consume(self) -> None:
        """Fetch and check the next batch while the previous one is written: the checks are
        this process's CPU, the write mostly the database's, so they overlap."""
        batches: asyncio.Queue[list[tuple[Delivery, Decoded]] | None] = asyncio.Queue(maxsize=1)
        writer = asyncio.ensure_future(self._write_loop(batches))
        last_lag = 0.0
        try:
            while not self._stopping.is_set() and not writer.done():
                if time.monotonic() - last_lag > LAG_EVERY_SECONDS:
                    last_lag = time.monotonic()
                    await self._read_lag()
                try:
                    messages = await self._consumer.fetch(self._batch, timeout=1.0)
                except Exception as exc:  # noqa: BLE001 -- NATS away: wait, reconnect, go on
                    log.debug("loader: fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                if messages:
                    await batches.put(await self._decode(messages))
        finally:
            if not writer.done():
                await batches.put(None)
            await writer

    async def _decode(self, messages: Sequence[Delivery]) -> list[tuple[Delivery, Decoded]]:
        """The batch's messages, checked; poison ones are dead-lettered here."""
        self._messages += len(messages)
        good: list[tuple[Delivery, Decoded]] = []
        for m in messages:
            try:
                good.append((m, decode(m.headers, m.data)))
            except PoisonMessage as exc:
                await self._dead_letter(m, str(exc))
        return good

    async def _write_loop(
        self, batches: asyncio.Queue[list[tuple[Delivery, Decoded]] | None]
    ) -> None:
        """Write and acknowledge batches in the order they were fetched; while the store is
        unavailable, hand them back to the stream (redelivered after a growing delay)."""
        backoff = 0.1
        while (batch := await batches.get()) is not None:
            if await self._write_batch(batch):
                backoff = 0.1
                continue
            self._redelivered += 1
            for m, _ in batch:
                await m.nak(delay=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _write_batch(self, batch: list[tuple[Delivery, Decoded]]) -> bool:
        """Write a batch in one transaction, then acknowledge it; False when the store is
        unavailable (nothing acknowledged)."""
        loop = asyncio.get_running_loop()
        try:
            refused = await loop.run_in_executor(None, self._write_all, batch)
        except StoreUnavailableError as exc:
            if not self.down:
                log.warning("loader: the store refuses writes (%s); rows wait in the stream", exc)
            self.down = True
            return False
        self.down = False
        refused_ids = {id(m) for m, _ in refused}
        for m, reason in refused:
            await self._dead_letter(m, reason)
        for m, _ in batch:
            if id(m) not in refused_ids:
                await m.ack()
        return True

    def _write_all(self, batch: list[tuple[Delivery, Decoded]]) -> list[tuple[Delivery, str]]:
        """One transaction for the batch; when the store refuses a value, message by message.
        Returns the messages the store refused, with the reason."""
        try:
            self._write([d for _, d in batch])
            return []
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a refused value: isolate its message
            log.warning("loader: a batch was refused (%s); retrying message by message", exc)
        refused = []
        for m, d in batch:
            try:
                self._write([d])
            except StoreUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 -- this message, and only it, is refused
                refused.append((m, f"refused by the store: {type(exc).__name__}: {exc}"))
        return refused

    def _write(self, decoded: Sequence[Decoded]) -> None:
        new = write_rows(self._store, [(d.kind, d.text, d.rows) for d in decoded])
        for kind, rows in new.items():
            self._written[kind] += rows
        self._duplicates += sum(d.rows for d in decoded) - sum(new.values())

    async def _dead_letter(self, message: Delivery, reason: str) -> None:
        await self._consumer.dead_letter(message, reason)
        self._dead += 1
        log.error("loader: a message was dead-lettered: %s", reason)

    async def _read_lag(self) -> None:
        try:
            self.lag = await self._consumer.lag()
        except Exception as exc:  # noqa: BLE001 -- lag is best effort; NATS may be away
            log.debug("loader: consumer info failed: %s", exc)

    def stats(self) -> LoaderStats:
        return LoaderStats(
            messages=self._messages,
            written={KIND_NAMES[k]: v for k, v in self._written.items()},
            duplicates=self._duplicates,
            dead_lettered=self._dead,
            redelivered_batches=self._redelivered,
            lag=self.lag,
        )


def open_loader(settings: Settings, store: Store, name: str = "abkit-loader") -> StreamLoader:
    """A started loader with a NATS connection of its own (``abkit loader``, ``abkit serve``).
    NATS need not answer yet: the loader starts consuming when it does."""
    client = StreamClient(settings.stream(), name)
    if not client.start(wait=5.0):
        log.warning("loader: NATS at %s is not reachable yet; waiting", settings.stream_url)
    loader = StreamLoader(
        client,
        store,
        durable=settings.loader_durable,
        batch=settings.loader_batch,
        ack_wait=settings.loader_ack_wait_seconds,
    )
    loader.start()
    return loader


def read_lag(settings: Settings, timeout: float = 5.0) -> int:
    """Messages the loaders have not acknowledged (``abkit health loader``). Raises
    :class:`LoaderUnknown` when NATS does not answer or no loader ever consumed the stream."""
    from nats.js.errors import NotFoundError

    client = StreamClient(settings.stream(), "abkit-health", ensure=False)
    try:
        if not client.start(wait=timeout):
            raise LoaderUnknown(f"NATS at {settings.stream_url} does not answer")
        try:
            return client.call(consumer_lag(client, settings.loader_durable)).result(timeout)
        except NotFoundError:
            raise LoaderUnknown(
                f"the stream {settings.stream_name} has no consumer "
                f"{settings.loader_durable!r}: no loader has run yet"
            ) from None
    finally:
        client.close()


class LoaderUnknown(Exception):
    """The loaders' lag cannot be read."""
