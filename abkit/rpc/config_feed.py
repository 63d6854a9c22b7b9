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

Each stream holds one thread (grpcio's synchronous server) of a pool of its own, apart from the
``grpc_workers`` of unary calls (:func:`~abkit.rpc.servicer.add_to_server`); a stream beyond
``config_streams`` is refused with RESOURCE_EXHAUSTED at once, so unary calls never wait behind
streams, nor share their threads with them. On shutdown every stream
ends (OK) and its clients reconnect to another server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from abkit.core.model import Experiment
from abkit.rpc import config_wire


class ConfigFeed:
    def __init__(self, *, max_streams: int, heartbeat_seconds: float) -> None:
        self._max_streams = max_streams
        self._heartbeat = heartbeat_seconds
        self._changed = threading.Condition()
        self._version = 0
        self._checksum = ""
        self._full: bytes | None = None
        self._heartbeat_bytes = b""
        self._closed = False
        self.streams = 0
        self.refused = 0

    def publish(self, experiments: Sequence[Experiment]) -> None:
        """A new config (a :meth:`ConfigCache.subscribe` listener): wake every stream."""
        update = config_wire.full_update(experiments)
        if update.checksum == self._checksum:
            return  # a revision moved without changing what assignment needs
        full = update.SerializeToString()
        beat = config_wire.heartbeat(update.checksum).SerializeToString()
        with self._changed:
            self._checksum, self._full, self._heartbeat_bytes = update.checksum, full, beat
            self._version += 1
            self._changed.notify_all()

    def close(self) -> None:
        """End every stream (server shutdown): clients reconnect elsewhere."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The messages of one ``WatchConfig`` call, already serialized."""
        with self._changed:
            if self.streams >= self._max_streams:
                self.refused += 1
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this server holds its most config streams ({self._max_streams}); "
                    "retry later or connect to another replica (ABKIT_CONFIG_STREAMS)",
                )
            self.streams += 1
        context.add_callback(self._wake)  # a cancelled call must not wait for a heartbeat
        try:
            yield from self._messages(request.known_checksum, context)
        finally:
            with self._changed:
                self.streams -= 1

    def _messages(self, known: str, context: grpc.ServicerContext) -> Iterator[bytes]:
        sent_version = -1
        while True:
            with self._changed:
                while not self._closed and context.is_active() and self._full is None:
                    self._changed.wait(self._heartbeat)  # not loaded yet: wait for it
                if sent_version == self._version:
                    self._changed.wait(self._heartbeat)
                if self._closed or not context.is_active():
                    return
                version, full, beat = self._version, self._full, self._heartbeat_bytes
                checksum = self._checksum
            if version != sent_version and full is not None:
                current = sent_version == -1 and known == checksum
                yield beat if current else full
                sent_version = version
            else:
                yield beat
