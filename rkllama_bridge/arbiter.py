"""One NPU arbiter per bridge process: LLM generation and image jobs never use the NPU at the same moment
(running RKLLM and RKNN work together can freeze the NPU), and they take turns fairly. Work of the same
kind shares the NPU as before (several RKLLM handles of ``--instances N`` generate together; image
workers on their own cores run together); only different kinds exclude each other.

Two ways to hold the NPU, both first come, first served (a kind that arrives while another kind waits
queues behind it, so neither can starve the other):

- ``with arbiter.turn("image"):`` around one unit of work (a denoising step, a super-resolution tile);
- ``with arbiter.session("llm") as npu:`` for a whole generation, calling ``npu.yield_point()`` between
  tokens: when someone else waits, the session lets them go first and then queues again, so an image
  job waiting behind a long reply gets the NPU within one token.

A wait can be bounded: ``acquire``/``session`` take a ``deadline`` (``time.monotonic()``) and a
``cancelled`` probe, checked while waiting; giving up raises :class:`NpuWaitAbandoned` and leaves the
queue, so a request whose time ran out (``--request-timeout``) or whose client left does not wait
for an image job to finish first.

``NpuArbiter(concurrent=True)`` (the bridge's ``--npu-concurrent``) lets everything through at once and
only counts. Waits show in /metrics as ``bridge_npu_wait_seconds{kind}`` and yields as
``bridge_npu_yields_total{kind}``; ``snapshot()`` gives the same numbers.
"""

from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PROBE_S = 0.02  # how often a bounded wait looks at its deadline and cancel probe

CancelProbe = Callable[[], bool]


class NpuWaitAbandoned(Exception):
    """A bounded wait for the NPU gave up (its deadline passed or its probe said cancelled)."""


class NpuArbiter:
    def __init__(self, concurrent: bool = False):
        self.concurrent = concurrent
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()  # (ticket, kind) waiting, in arrival order
        self._holders: Dict[object, str] = {}  # ticket -> kind of everyone using the NPU now
        self._stats: Dict[str, Dict[str, float]] = collections.defaultdict(
            lambda: {"turns": 0, "waits": 0, "wait_s": 0.0, "yields": 0})
        self._wait_hist = None
        self._yields = None

    def register_metrics(self, registry) -> None:
        """Export the waits and yields into a Prometheus ``registry`` (the bridge's)."""
        from prometheus_client import Counter, Histogram

        self._wait_hist = Histogram("bridge_npu_wait_seconds", "Time a job waited for the NPU arbiter",
                                    ["kind"], buckets=WAIT_BUCKETS, registry=registry)
        self._yields = Counter("bridge_npu_yields_total", "Times a running generation let a waiting job go "
                               "first", ["kind"], registry=registry)

    # -- holding the NPU ------------------------------------------------------------------------------

    def acquire(self, kind: str, deadline: Optional[float] = None, cancelled: Optional[CancelProbe] = None) -> object:
        """Block until the NPU is free for ``kind`` (FIFO between kinds); returns the ticket for ``release``.
        Raises :class:`NpuWaitAbandoned` once ``deadline`` passes or ``cancelled()`` is true while waiting."""
        ticket = object()
        started = time.monotonic()
        with self._cond:
            if not self.concurrent:
                self._queue.append((ticket, kind))
                try:
                    while not self._may_enter(ticket, kind):
                        self._wait(deadline, cancelled)
                finally:
                    self._queue.remove((ticket, kind))
                    self._cond.notify_all()  # the next waiter may enter (with us, if of our kind)
                self._holders[ticket] = kind
        self._count(kind, time.monotonic() - started)
        return ticket

    def _wait(self, deadline: Optional[float], cancelled: Optional[CancelProbe]) -> None:
        """One wait on the condition (caller holds it); raises when the waiter gives up."""
        if cancelled is not None and cancelled():
            raise NpuWaitAbandoned("cancelled while waiting for the NPU")
        if deadline is None:
            self._cond.wait(PROBE_S if cancelled is not None else None)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise NpuWaitAbandoned("the deadline passed while waiting for the NPU")
        self._cond.wait(min(left, PROBE_S))

    def _may_enter(self, ticket: object, kind: str) -> bool:
        if any(k != kind for k in self._holders.values()):
            return False
        for t, k in self._queue:  # everyone ahead must be of our kind (they enter together with us)
            if t is ticket:
                return True
            if k != kind:
                return False
        return False

    def release(self, ticket: object) -> None:
        with self._cond:
            if self._holders.pop(ticket, None) is not None:
                self._cond.notify_all()

    def contended(self, kind: Optional[str] = None) -> bool:
        """Whether a job of another kind than ``kind`` (of any kind if None) waits for the NPU now."""
        with self._cond:
            return any(kind is None or k != kind for _, k in self._queue)

    @contextmanager
    def turn(self, kind: str) -> Iterator[None]:
        """Hold the NPU for one unit of work."""
        ticket = self.acquire(kind)
        try:
            yield
        finally:
            self.release(ticket)

    @contextmanager
    def session(self, kind: str, deadline: Optional[float] = None,
                cancelled: Optional[CancelProbe] = None) -> Iterator["NpuSession"]:
        """Hold the NPU for a long job that calls ``yield_point()`` between its steps; the waits (the first
        and those after each yield) are bounded by ``deadline`` and ``cancelled`` as in :meth:`acquire`."""
        s = NpuSession(self, kind, deadline, cancelled)
        try:
            yield s
        finally:
            s.close()

    # -- numbers --------------------------------------------------------------------------------------

    def _count(self, kind: str, waited: float) -> None:
        with self._cond:
            st = self._stats[kind]
            st["turns"] += 1
            if waited > 0.0005:
                st["waits"] += 1
                st["wait_s"] += waited
        if self._wait_hist is not None:
            self._wait_hist.labels(kind).observe(waited)

    def _yielded(self, kind: str) -> None:
        with self._cond:
            self._stats[kind]["yields"] += 1
        if self._yields is not None:
            self._yields.labels(kind).inc()

    def snapshot(self) -> dict:
        with self._cond:
            return {"concurrent": self.concurrent, "waiting": len(self._queue),
                    "busy": sorted(set(self._holders.values())),
                    "kinds": {k: dict(v) for k, v in self._stats.items()}}


class NpuSession:
    """The NPU held by one long job (see :meth:`NpuArbiter.session`)."""

    def __init__(self, arbiter: NpuArbiter, kind: str, deadline: Optional[float] = None,
                 cancelled: Optional[CancelProbe] = None):
        self.arbiter = arbiter
        self.kind = kind
        self._deadline, self._cancelled = deadline, cancelled
        self._ticket: Optional[object] = arbiter.acquire(kind, deadline, cancelled)

    @property
    def holding(self) -> bool:
        return self._ticket is not None

    def yield_point(self) -> None:
        """Between two steps: if another job waits, let it run first, then take the NPU back. If the wait
        to take it back is abandoned the session holds nothing from then on: the job's owner, which saw
        the same deadline or cancellation, is aborting it."""
        if self._ticket is None or self.arbiter.concurrent or not self.arbiter.contended(self.kind):
            return
        self.arbiter.release(self._ticket)
        self._ticket = None
        self.arbiter._yielded(self.kind)
        try:
            self._ticket = self.arbiter.acquire(self.kind, self._deadline, self._cancelled)
        except NpuWaitAbandoned:
            pass

    def close(self) -> None:
        if self._ticket is not None:
            self.arbiter.release(self._ticket)
            self._ticket = None
