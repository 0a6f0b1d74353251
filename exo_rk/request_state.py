"""Per-request state with an idle TTL and a size cap.

exo never tells an engine that a request ended (it stops calling after EOS, after its own token limit, or
when the client left), so every request's state must expire on its own. Evicted states are cancelled
(which closes their bridge stream, so the bridge aborts the generation) and their ids remembered for a
while, so a late call for one is answered with EOS instead of being mistaken for a new prompt.

A state the engine is waiting on (``waiting`` true: a call is blocked on its next token) is alive by
definition and is never evicted, neither by the TTL nor by the cap. The TTL counts from the later of the
last call and the state's own ``last_activity`` (its last token), so a slow prefill or a long queue is not
mistaken for an abandoned request. A state may also say that its caller stopped asking (``abandoned``:
tokens wait in its buffer and no call came for ``idle`` seconds); it is then ended the same way.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Generic, List, Optional, Protocol, Tuple, TypeVar

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _waiting(state: object) -> bool:
    return bool(getattr(state, "waiting", False))


def _last_activity(state: object, touched: float) -> float:
    return max(touched, getattr(state, "last_activity", touched))


S = TypeVar("S", bound=Cancellable)


class RequestTable(Generic[S]):
    """``request_id → state``, least recently used first; not thread-safe (one event loop owns it)."""

    def __init__(self, ttl: float, cap: int, clock: Callable[[], float] = time.monotonic,
                 idle: Optional[float] = None):
        if ttl <= 0 or cap < 1 or (idle is not None and idle <= 0):
            raise ValueError("ttl (and idle) must be positive and cap at least 1")
        self.ttl = ttl
        self.cap = cap
        self.idle = idle
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
        idle_ones = [(rid, st) for rid, (_, st) in self._states.items() if not _waiting(st)]
        for victim, victim_state in idle_ones[: max(0, len(self._states) - self.cap)]:
            log.warning("request %s evicted: more than %d requests held", victim, self.cap)
            self._drop(victim, victim_state)
        if len(self._states) > self.cap:
            log.warning("%d requests held (cap %d): the engine is waiting on all of them, none is evicted",
                        len(self._states), self.cap)

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
        """End states idle for longer than the TTL, and those whose caller stopped asking (``idle``);
        returns their ids. States the engine is waiting on stay."""
        now = self._clock()
        gone = []
        for request_id, (touched, state) in list(self._states.items()):
            if _waiting(state):
                continue
            quiet = now - _last_activity(state, touched)
            if quiet > self.ttl:
                log.warning("request %s evicted: no call and no token for %.0f s (abandoned by its caller)",
                            request_id, quiet)
                self._drop(request_id, state)
            elif self.idle is not None and getattr(state, "abandoned", lambda _idle: False)(self.idle):
                log.warning("request %s ended: tokens buffered and no call for %.1f s, so its caller stopped "
                            "asking; generation aborted", request_id, self.idle)
                self._drop(request_id, state, "abandoned")
            else:
                continue
            gone.append(request_id)
        return gone

    def clear(self) -> None:
        for request_id, (_, state) in list(self._states.items()):
            self._drop(request_id, state)

    def _drop(self, request_id: str, state: S, reason: str = "evicted") -> None:
        self._states.pop(request_id, None)
        state.cancel()
        self._remember_ended(request_id, reason)

    def _remember_ended(self, request_id: str, reason: Optional[str]) -> None:
        self._ended[request_id] = reason
        self._ended.move_to_end(request_id)
        while len(self._ended) > 4 * self.cap:
            self._ended.popitem(last=False)
