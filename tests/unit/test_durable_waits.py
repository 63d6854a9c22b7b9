"""Awaiting group commits on an event loop (abkit.rpc.durable) with the journal's real Group
and Receipt: one callback and one hurry per group, failures and timeouts become UNAVAILABLE."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from abkit.errors import StoreUnavailableError
from abkit.infra.journal import Group, Receipt
from abkit.rpc.durable import DurableWaits
from abkit.services.assignment import Pending


class Committer:
    """What a receipt hurries: counts the hurries (the journal's flusher in production)."""

    def __init__(self) -> None:
        self.hurried = 0

    def _hurry(self) -> None:
        self.hurried += 1


def pending(group: Group, committer: Committer, failure: str = "not durable") -> Pending:
    return Pending(Receipt(committer, group), failure)


def test_the_calls_of_one_group_share_one_callback_and_one_hurry() -> None:
    async def main() -> list[None]:
        waits = DurableWaits(asyncio.get_running_loop(), timeout=5.0)
        group, committer = Group(), Committer()
        calls = [asyncio.ensure_future(waits.settle(pending(group, committer))) for _ in range(50)]
        await asyncio.sleep(0)  # every call is waiting now
        assert committer.hurried == 1
        assert len(group._callbacks or ()) == 1
        assert not any(c.done() for c in calls)
        threading.Thread(target=group.finish, args=(True,)).start()  # the committing thread
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [None] * 50


def test_a_failed_commit_fails_every_call_of_its_group_with_the_pending_message() -> None:
    async def main() -> list[BaseException | None]:
        waits = DurableWaits(asyncio.get_running_loop(), timeout=5.0)
        group, committer = Group(), Committer()
        calls = [waits.settle(pending(group, committer, f"rows {i} lost")) for i in range(3)]
        threading.Timer(0.05, group.finish, args=(False,)).start()
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r) for r in results] == [StoreUnavailableError] * 3
    assert [str(r) for r in results] == ["rows 0 lost", "rows 1 lost", "rows 2 lost"]


def test_a_commit_that_never_comes_times_out_as_unavailable() -> None:
    async def main() -> None:
        waits = DurableWaits(asyncio.get_running_loop(), timeout=0.05)
        await waits.settle(pending(Group(), Committer(), "exposures were not durable in time"))

    with pytest.raises(StoreUnavailableError, match="not durable in time"):
        asyncio.run(main())


def test_a_finished_group_answers_at_once_and_none_is_nothing_to_wait_for() -> None:
    async def main() -> int:
        waits = DurableWaits(asyncio.get_running_loop(), timeout=5.0)
        group, committer = Group(), Committer()
        group.finish(True)
        await waits.settle(pending(group, committer))
        await waits.settle(None)
        return committer.hurried

    assert asyncio.run(main()) == 0


def test_a_cancelled_call_does_not_stop_the_others_of_its_group() -> None:
    async def main() -> None:
        waits = DurableWaits(asyncio.get_running_loop(), timeout=5.0)
        group, committer = Group(), Committer()
        gone = asyncio.ensure_future(waits.settle(pending(group, committer)))
        stays = asyncio.ensure_future(waits.settle(pending(group, committer)))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away
        group.finish(True)
        await stays
        assert gone.cancelled()

    asyncio.run(main())


def test_a_group_runs_late_callbacks_at_once_and_survives_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = Group()
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("a waiter's bug")

    group.on_done(broken)
    group.on_done(lambda: seen.append("registered before"))
    with caplog.at_level(logging.ERROR, logger="abkit.infra.journal"):
        group.finish(True)
    group.on_done(lambda: seen.append("registered after"))
    assert seen == ["registered before", "registered after"]
    assert group.finished() and group.durable
    assert "callback failed" in caplog.text
