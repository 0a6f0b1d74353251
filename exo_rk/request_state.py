"""Per-request state with an idle TTL and a size cap.

exo never tells an engine that a request ended (it stops calling after EOS, after its own token limit, or
when the client left), so every request's state must expire on its own. Evicted states are cancelled
(which closes their bridge stream, so the bridge aborts the generation) and their ids remembered for a
while, so a late call for one is answered with EOS instead of being mistaken for a new prompt.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Generic, List, Optional, Protocol, Tuple, TypeVar

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


S = TypeVar("S", bound=Cancellable)


class RequestTable(Generic[S]):
    """``request_id → state``, least recently used first; not thread-safe (one event loop owns it)."""

    def __init__(self, ttl: float, cap: int, clock: Callable[[], float] = time.monotonic):
        if ttl <= 0 or cap < 1:
            raise ValueError("ttl must be positive and cap at least 1")
        self.ttl = ttl
        self.cap = cap
        self._clock = clock
        self._states: "OrderedDict[str, Tuple[float, S]]" = OrderedDict()
        self._ended: "OrderedDict[str, Optional[str]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._states

    def ids(self) -> List[str]:
        return list(self._states)

    def get(self, request_id: str) -> Optional[S]:
        """The state, marked as just used; None when unknown or evicted."""
        item = self._states.get(request_id)
        if item is None:
            return None
        self._states[request_id] = (self._clock(), item[1])
        self._states.move_to_end(request_id)
        return item[1]

    def put(self, request_id: str, state: S) -> None:
        """Add (or replace) a state; the least recently used ones go when over the cap."""
        old = self._states.pop(request_id, None)
        if old is not None:
            old[1].cancel()
        self._ended.pop(request_id, None)
        self._states[request_id] = (self._clock(), state)
        while len(self._states) > self.cap:
            victim, (_, victim_state) = next(iter(self._states.items()))
            log.warning("request %s evicted: more than %d requests held", victim, self.cap)
            self._drop(victim, victim_state)

    def finish(self, request_id: str, reason: Optional[str] = None) -> None:
        """Forget a request that ended (its stream is closed if it was still open); keep why it ended."""
        item = self._states.pop(request_id, None)
        if item is not None:
            item[1].cancel()
        self._remember_ended(request_id, reason)

    def ended_reason(self, request_id: str) -> Optional[str]:
        """Why a recently ended request ended (``stop``, ``length``, ``evicted``, ...), if known."""
        return self._ended.get(request_id)

    def was_ended(self, request_id: str) -> bool:
        """True for a request that finished or was evicted recently."""
        return request_id in self._ended

    def expire(self) -> List[str]:
        """Evict states idle for longer than the TTL; returns their ids."""
        now = self._clock()
        gone = []
        while self._states:
            request_id, (touched, state) = next(iter(self._states.items()))
            if now - touched <= self.ttl:
                break
            log.warning(
                "request %s evicted: no call for %.0f s (abandoned by its caller)", request_id, now - touched
            )
            self._drop(request_id, state)
            gone.append(request_id)
        return gone

    def clear(self) -> None:
        for request_id, (_, state) in list(self._states.items()):
            self._drop(request_id, state)

    def _drop(self, request_id: str, state: S) -> None:
        self._states.pop(request_id, None)
        state.cancel()
        self._remember_ended(request_id, "evicted")

    def _remember_ended(self, request_id: str, reason: Optional[str]) -> None:
        self._ended[request_id] = reason
        self._ended.move_to_end(request_id)
        while len(self._ended) > 4 * self.cap:
            self._ended.popitem(last=False)
