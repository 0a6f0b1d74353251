"""A time limit on one await that never loses the caller's cancellation.

Before Python 3.12, ``asyncio.wait_for`` returns the awaited result when its caller is cancelled in the
same loop turn as that result arrives: the cancellation is dropped. For a gateway relaying tokens every few
milliseconds that turn comes often, and a client that hung up kept its generation running on the board to
the end. ``asyncio.timeout`` (3.11) has no such window; ``wait_for`` remains only for Python 3.10.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Optional, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: Optional[float]) -> T:
    """``await awaitable``, raising ``asyncio.TimeoutError`` after ``seconds`` (None: no limit)."""
    if seconds is None:
        return await awaitable
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)
