"""Per-model scheduling: each loaded model owns one or more handles; requests take a free handle in
strict arrival order, wait in a bounded FIFO, and leave the queue as soon as their client is gone.
Among free handles a request takes the one whose KV cache holds the longest prefix of its prompt
(so concurrent conversations stay on their handles), else the one idle the longest."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, List, Optional, Sequence

from .errors import ClientGone, QueueFull
from .runtimes.base import ModelHandle, reusable_prefix

POLL_S = 0.05  # how often a waiting request checks whether its client went away


class HandleQueue:
    def __init__(self, handles: List[ModelHandle], queue_max: int):
        self.handles = list(handles)
        self.queue_max = queue_max
        self._idle = collections.deque(self.handles)
        self._waiting: collections.deque = collections.deque()
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self.handles) - len(self._idle)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    def acquire(self, client_gone: Callable[[], bool] = lambda: False, retry_after_s: int = 1,
                prompt_ids: Sequence[int] = ()) -> ModelHandle:
        """A free handle, in FIFO order (the best one for ``prompt_ids``). Raises QueueFull when
        ``queue_max`` requests already wait, and ClientGone when the client disconnects while waiting
        (its place is given up at once)."""
        with self._cond:
            if self._idle and not self._waiting:
                return self._take(prompt_ids)
            if len(self._waiting) >= self.queue_max:
                raise QueueFull(f"{len(self._waiting)} requests already wait for this model (queue max "
                                f"{self.queue_max}); retry later", headers={"Retry-After": str(retry_after_s)})
            ticket = object()
            self._waiting.append(ticket)
            try:
                while not (self._waiting[0] is ticket and self._idle):
                    if client_gone():
                        raise ClientGone("client disconnected while queued")
                    self._cond.wait(POLL_S)
                self._waiting.popleft()
                return self._take(prompt_ids)
            finally:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()

    def _take(self, prompt_ids: Sequence[int]) -> ModelHandle:
        """The idle handle caching the longest prefix of ``prompt_ids``; ties go to the longest idle
        (``_idle`` is in release order). Caller holds the lock."""
        best = max(self._idle, key=lambda h: reusable_prefix(getattr(h, "cached_ids", ()), prompt_ids),
                   default=None) if prompt_ids else None
        if best is None or not reusable_prefix(getattr(best, "cached_ids", ()), prompt_ids):
            return self._idle.popleft()
        self._idle.remove(best)
        return best

    def release(self, handle: ModelHandle) -> None:
        with self._cond:
            self._idle.append(handle)
            self._cond.notify_all()

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until no handle is in use and nobody waits (used before unloading)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < len(self.handles) or self._waiting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else POLL_S)
            return True
