"""Awaiting durable rows on the server's event loop: one wake-up per group commit, not per call.

An answer that must not leave before its rows are durable waits for their group commit
(:mod:`abkit.infra.journal`), which every concurrent call shares. On the event loop, the first
call of a group registers one callback with the group -- the committing thread runs it, and it
hands the loop a single ``call_soon_threadsafe`` -- and one timer; every later call of the same
group only adds a future to the group's list. A group of 50 calls costs the loop one wake-up
instead of the 50 thread hand-offs a thread-per-call server pays.

The timeout runs from the group's first waiter, so a later call of the same group may give up
a little earlier than ``timeout`` after its own start (a group gathers for milliseconds).
"""

from __future__ import annotations

import asyncio

from abkit.errors import StoreUnavailableError
from abkit.ports import Commit
from abkit.rpc import loops
from abkit.services.assignment import Pending


class DurableWaits:
    """The waits of one event loop; built and used on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._groups: dict[Commit, list[asyncio.Future[bool]]] = {}

    async def settle(self, pending: Pending | None) -> None:
        """Return once ``pending`` is durable; :class:`StoreUnavailableError` when its commit
        failed or did not come within the timeout."""
        if pending is None:
            return
        receipt = pending.receipt
        group = receipt.group
        if group.finished():
            durable = group.durable
        else:
            future: asyncio.Future[bool] = self._loop.create_future()
            waiters = self._groups.get(group)
            if waiters is None:
                self._groups[group] = [future]
                timer = self._loop.call_later(self._timeout, self._resolve, group, False)
                group.on_done(lambda: loops.wake(self._loop, self._committed, group, timer))
                receipt.hurry()
            else:
                waiters.append(future)
            durable = await future
        if not durable:
            raise StoreUnavailableError(pending.failure)

    def _committed(self, group: Commit, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self._resolve(group, group.durable)

    def _resolve(self, group: Commit, durable: bool) -> None:
        for future in self._groups.pop(group, ()):
            if not future.done():  # a cancelled call (the client went away)
                future.set_result(durable)
