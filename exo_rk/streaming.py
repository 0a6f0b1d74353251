"""``StreamingSession``: one native bridge stream handed out one token per call.

A reader task drains the bridge's NDJSON stream into a queue as tokens arrive, so exo's next
``infer_tensor`` call returns as soon as the token exists. The session never raises after its first token:
a broken stream, a bridge error line or a silent bridge ends it, is logged, and reads as end-of-stream.
``cancel()`` wakes a call that is waiting at once (it reads end-of-stream). The session tells the request
table whether a call is waiting on it and when it last saw a token, so it is never evicted while in use,
and whether its caller seems to have stopped asking (tokens buffered, no call for a while).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from exo_rk import errors
from exo_rk.client import StreamEnd, StreamEvent, TokenEvent
from rk_common.timeouts import within

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_CANCELLED = object()  # put into the queue by cancel(): wakes a waiting call


class StreamingSession:
    """Tokens of one request. ``next_token()`` returns a token id, or None once the stream is over."""

    def __init__(
        self,
        request_id: str,
        events: AsyncIterator[StreamEvent],
        *,
        first_token_timeout: float,
        token_timeout: float,
    ):
        self.request_id = request_id
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self.tokens_served = 0
        self.end: Optional[StreamEnd] = None
        self.ended_by: Optional[str] = None
        self.limit: Optional[int] = None  # tokens after which the engine ends the request (exo's limits)
        self.waiting = False  # a next_token() call is blocked on the queue
        self.received_at = self.served_at = time.monotonic()  # last token from the bridge / to the caller
        self._queue: "asyncio.Queue[object]" = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(events), name=f"rkllm-stream-{request_id}")

    @property
    def done(self) -> bool:
        return self.ended_by is not None

    @property
    def last_activity(self) -> float:
        """When this request last moved: a token from the bridge or a call answered."""
        return max(self.received_at, self.served_at)

    @property
    def reader_running(self) -> bool:
        """True while the bridge is still sending this request's tokens."""
        return not self._task.done()

    async def _pump(self, events: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in events:
                self.received_at = time.monotonic()
                self._queue.put_nowait(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an end-of-stream for the reader
            self._queue.put_nowait(_Failure(exc))
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - the stream is gone either way
                    pass

    async def next_token(self) -> Optional[int]:
        """The next token id; None at the end. Raises ``BridgeError`` only if the very first read fails."""
        if self.done:
            return None
        first = self.tokens_served == 0
        timeout = self.first_token_timeout if first else self.token_timeout
        self.waiting = True
        try:
            try:
                item = self._queue.get_nowait()  # tokens usually wait here already: no timer, no task
            except asyncio.QueueEmpty:
                item = await within(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return self._stop("timeout", f"no token from the bridge for {timeout:.0f} s", first)
        finally:
            self.waiting = False
            self.served_at = time.monotonic()
        if item is _CANCELLED or self.ended_by == "cancelled":
            return None
        if isinstance(item, TokenEvent):
            self.tokens_served += 1
            return item.token_id
        if isinstance(item, StreamEnd):
            self.end = item
            if item.finish_reason == "error":
                return self._stop("error", f"bridge reported {item.error}", first)
            self.ended_by = item.finish_reason
            return None
        assert isinstance(item, _Failure)
        if first and isinstance(item.error, errors.BridgeError):
            self.ended_by = "error"
            raise item.error
        return self._stop("error", f"{item.error}", first)

    def _stop(self, reason: str, message: str, first: bool) -> None:
        self.ended_by = reason
        self.cancel()
        if first:
            raise errors.BridgeUnavailable(f"request {self.request_id}: {message}")
        log.error("request %s ended early after %d tokens: %s", self.request_id, self.tokens_served, message)
        return None

    def abandoned(self, idle: float) -> bool:
        """True when tokens wait in the buffer and no call came for ``idle`` seconds: exo (which never
        says that it stopped) has reached its own limit or lost its client."""
        return not self.waiting and not self._queue.empty() and time.monotonic() - self.served_at > idle

    def cancel(self) -> None:
        """Stop reading; closing the connection makes the bridge abort the generation. A call waiting
        for a token returns at once (end-of-stream)."""
        if not self._task.done():
            self._task.cancel()
        if self.ended_by is None:
            self.ended_by = "cancelled"
        self._queue.put_nowait(_CANCELLED)
