"""``within``: a time limit on an await that keeps the caller's cancellation even when the awaited value
arrives in the same loop turn (``asyncio.wait_for`` before 3.12 drops it there)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from rk_common.timeouts import within


async def _cancelled_as_the_value_arrives(limit):
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(limit(queue.get(), 30))
    await asyncio.sleep(0)  # the task now waits on the queue
    queue.put_nowait("token")  # wakes the getter in the next turn...
    task.cancel()  # ...in which the caller's cancellation arrives too
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


def test_a_cancellation_that_meets_the_value_is_kept():
    assert asyncio.run(_cancelled_as_the_value_arrives(within)) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for keeps the cancellation from 3.12 on")
def test_wait_for_loses_that_cancellation_on_this_python():
    """The reason ``within`` exists: the same sequence through ``asyncio.wait_for`` returns the value."""
    assert asyncio.run(_cancelled_as_the_value_arrives(asyncio.wait_for)) == "token"


def test_the_limit_still_applies():
    async def never():
        await asyncio.Event().wait()

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(within(never(), 0.01))
    assert asyncio.run(within(asyncio.sleep(0, result=7), None)) == 7
