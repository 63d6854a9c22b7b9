"""The gRPC server's event loop, seen from other threads.

The server (``grpc.aio``) runs on an event loop in a thread of its own
(:class:`~abkit.rpc.server.GrpcServer`); the CLI, the tests and the demo call it from theirs,
and the journal's committer and the config refresher wake coroutines on it. These are the few
ways across.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def start() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new loop, running in a daemon thread named ``abkit-grpc``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="abkit-grpc", daemon=True)
    thread.start()
    return loop, thread


def run(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on ``loop`` and wait here for its result (or its exception)."""
    return asyncio.run_coroutine_threadsafe(work, loop).result()


def end(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop ``loop``, wait for its thread, close it."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def wake(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Schedule ``callback(*args)`` on ``loop`` from any thread; nothing if the loop is closed
    (the server has stopped: nobody is left to wake)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
