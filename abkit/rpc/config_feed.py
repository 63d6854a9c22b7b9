"""``WatchConfig``: the experiment config, pushed to clients that assign in their own process.

The :class:`~abkit.services.config.ConfigCache` tells the feed about every change it loads
(each server process polls the store's revisions every ``ABKIT_CONFIG_REFRESH_SECONDS``, so a
change committed through any process -- CLI, worker, web -- reaches every server). The feed
serializes the whole config **once** per change and every stream sends those same bytes:

* on connect: the whole config, or a heartbeat when the client's ``known_checksum`` is current
  (a reconnecting client resumes for a few bytes);
* after every change: the whole config;
* otherwise a heartbeat every ``ABKIT_CONFIG_HEARTBEAT_SECONDS``, so a client can tell a quiet
  config from a dead stream.

Streams are coroutines on the server's event loop (``grpc.aio``): an idle stream holds no
thread, only a future it awaits. A change published from the config refresher's thread wakes
them all with one ``call_soon_threadsafe``. A stream beyond ``config_streams`` is refused with
RESOURCE_EXHAUSTED at once. On shutdown every stream ends (OK) and its clients reconnect to
another server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import grpc

from abkit.core.model import Experiment
from abkit.rpc import config_wire, loops


class _Published(NamedTuple):
    """What streams send, swapped whole (one reference) by :meth:`ConfigFeed.publish`."""

    version: int
    checksum: str
    full: bytes | None
    heartbeat: bytes


class ConfigFeed:
    def __init__(self, *, max_streams: int, heartbeat_seconds: float) -> None:
        self._max_streams = max_streams
        self._heartbeat = heartbeat_seconds
        self._published = _Published(0, "", None, b"")
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Future[None] | None = None
        self.streams = 0
        self.refused = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve streams on ``loop`` (the server's)."""
        self._loop = loop
        self._changed = loop.create_future()

    def publish(self, experiments: Sequence[Experiment]) -> None:
        """A new config (a :meth:`ConfigCache.subscribe` listener, any thread): wake every
        stream."""
        update = config_wire.full_update(experiments)
        if update.checksum == self._published.checksum:
            return  # a revision moved without changing what assignment needs
        full = update.SerializeToString()
        beat = config_wire.heartbeat(update.checksum).SerializeToString()
        self._published = _Published(self._published.version + 1, update.checksum, full, beat)
        self._wake_soon()

    def close(self) -> None:
        """End every stream (server shutdown): clients reconnect elsewhere."""
        self._closed = True
        self._wake_soon()

    def _wake_soon(self) -> None:
        if self._loop is not None:
            loops.wake(self._loop, self._wake)

    def _wake(self) -> None:
        assert self._loop is not None
        changed, self._changed = self._changed, self._loop.create_future()
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _change(self) -> None:
        """Until the next publish or close, or a heartbeat's time."""
        assert self._changed is not None, "bind() the feed to the server's loop first"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), self._heartbeat)

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The messages of one ``WatchConfig`` call, already serialized. A client that goes away
        cancels the call's task, which ends this generator where it awaits."""
        if self.streams >= self._max_streams:
            self.refused += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server holds its most config streams ({self._max_streams}); "
                "retry later or connect to another replica (ABKIT_CONFIG_STREAMS)",
            )
        self.streams += 1
        try:
            known, sent_version = request.known_checksum, -1
            while True:
                while not self._closed and self._published.full is None:
                    await self._change()  # not loaded yet: wait for it
                if sent_version == self._published.version:
                    await self._change()
                if self._closed:
                    return
                published = self._published
                if published.version != sent_version and published.full is not None:
                    current = sent_version == -1 and known == published.checksum
                    yield published.heartbeat if current else published.full
                    sent_version = published.version
                else:
                    yield published.heartbeat
        finally:
            self.streams -= 1
