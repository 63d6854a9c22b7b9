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

from abkit.config import EVENT_LOOPS

T = TypeVar("T")


def new_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: ``asyncio``'s own; ``uvloop``'s (libuv, in C: about a tenth less CPU a
    call for a ``grpc.aio`` server here, 4-22 % in probes, BENCHMARKS.md); ``auto``, uvloop's
    when it is installed (``abkit[fast]``), else asyncio's."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def start(kind: str = "auto") -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new loop of ``kind`` (:func:`new_loop`), running in a daemon thread named
    ``abkit-grpc``."""
    loop = new_loop(kind)
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
