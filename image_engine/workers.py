"""A pool of worker threads, each owning its own state (a model runtime), fed by a bounded queue.

RKNN contexts must not be shared across threads, so each worker creates its state inside its own thread.
A job that times out is cancelled, not merely abandoned: its token is set, a running job stops at its next
``raise_if_cancelled()`` check and a queued job is dropped without running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, TypeVar

from .errors import Cancelled, JobTimeout, QueueFull, Unavailable

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")


class CancelToken:
    """Set once to ask a job to stop; jobs poll it between tiles or steps."""

    def __init__(self):
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the job has been cancelled."""
        if self._event.is_set():
            raise Cancelled(f"job cancelled: {self.reason}")


@dataclass
class _Job:
    fn: Callable
    token: CancelToken = field(default_factory=CancelToken)
    future: Future = field(default_factory=Future)


@dataclass
class PoolStats:
    """Counters a pool exposes (read under the pool's lock, via :meth:`WorkerPool.stats`)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    cancelled: int = 0
    dropped: int = 0
    active: int = 0


class WorkerPool(Generic[S]):
    """``num_workers`` threads, worker ``i`` owning ``make_worker_state(i)``, behind a queue of ``queue_max``.

    The constructor returns once every worker has built its state, and raises the first build error (after
    stopping the threads), so a bad model path fails at start-up rather than at the first request.
    """

    def __init__(self, num_workers: int, make_worker_state: Callable[[int], S], queue_max: int,
                 close_state: Optional[Callable[[S], None]] = None, name: str = "worker"):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        # Unbounded underneath (so shutdown sentinels never block); the bound is enforced in submit().
        self._queue: queue.Queue = queue.Queue()
        self._queue_max = max(1, queue_max)
        self._lock = threading.Lock()
        self._stats = PoolStats()
        self._closed = False
        self._close_state = close_state
        self._errors: list[BaseException] = []
        self._tokens: dict[int, CancelToken] = {}
        # Jobs accepted and not yet finished (queued + running). The bound counts these, not the queue
        # length: a job a worker has not picked up yet still holds a worker's place.
        self._outstanding = 0
        self._ready = threading.Barrier(num_workers + 1)
        self._threads = [threading.Thread(target=self._work, args=(i, make_worker_state),
                                          name=f"{name}-{i}", daemon=True) for i in range(num_workers)]
        for t in self._threads:
            t.start()
        self._ready.wait()
        if self._errors:
            self.close()
            raise self._errors[0]

    def _work(self, index: int, make_state: Callable[[int], S]) -> None:
        try:
            state = make_state(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            with self._lock:
                self._errors.append(exc)
            self._ready.wait()
            return
        self._ready.wait()
        try:
            while (job := self._queue.get()) is not None:
                try:
                    self._run(job, state)
                finally:
                    with self._lock:
                        self._outstanding -= 1
        finally:
            if self._close_state is not None:
                self._close_state(state)

    def _run(self, job: _Job, state: S) -> None:
        if job.token.cancelled or not job.future.set_running_or_notify_cancel():
            with self._lock:
                self._stats.dropped += 1
            if not job.future.done():
                job.future.set_exception(Cancelled(f"job dropped before it started: {job.token.reason}"))
            return
        with self._lock:
            self._stats.active += 1
            self._tokens[id(job)] = job.token
        try:
            result = job.fn(state, job.token)
        except Cancelled as exc:
            self._count(job, cancelled=1)
            job.future.set_exception(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the submitter
            self._count(job, failed=1)
            job.future.set_exception(exc)
        else:
            self._count(job, completed=1)
            job.future.set_result(result)

    def _count(self, job: _Job, **deltas: int) -> None:
        with self._lock:
            self._tokens.pop(id(job), None)
            self._stats.active -= 1
            for key, value in deltas.items():
                setattr(self._stats, key, getattr(self._stats, key) + value)

    def submit(self, fn: Callable[[S, CancelToken], R], timeout: Optional[float] = None) -> R:
        """Run ``fn(state, token)`` on a worker and return its result (blocking).

        Raises :class:`QueueFull` if the queue is full, :class:`JobTimeout` after ``timeout`` seconds (the
        job is then cancelled), :class:`Unavailable` once the pool is closed, or whatever ``fn`` raised.
        """
        return self.start(fn, timeout).result()

    def start(self, fn: Callable[[S, CancelToken], R], timeout: Optional[float] = None) -> "PendingJob[R]":
        """Queue ``fn`` and return at once, so the caller can work while it runs; ``result()`` collects it.

        ``timeout`` counts from now. Raises :class:`QueueFull` or :class:`Unavailable` like :meth:`submit`.
        """
        job = _Job(fn)
        with self._lock:
            if self._closed:
                raise Unavailable("the worker pool is shut down")
            if self._outstanding >= len(self._threads) + self._queue_max:
                self._stats.rejected += 1
                raise QueueFull(f"all {len(self._threads)} workers are busy and the queue "
                                f"({self._queue_max}) is full; retry later")
            self._queue.put_nowait(job)
            self._outstanding += 1
            self._stats.submitted += 1
        return PendingJob(self, job, timeout)

    def _timed_out(self) -> None:
        with self._lock:
            self._stats.timed_out += 1

    def stats(self) -> dict:
        """A snapshot of the counters plus the queue length and worker count."""
        with self._lock:
            snap = dict(vars(self._stats))
        snap.update(queued=self._queue.qsize(), workers=len(self._threads))
        return snap

    def close(self, timeout: float = 30.0) -> None:
        """Drop queued jobs, let running ones see cancellation, and join the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for token in self._tokens.values():
                token.cancel("shutting down")
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.token.cancel("shutting down")
            with self._lock:
                self._outstanding -= 1
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Cancelled("job dropped: shutting down"))
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)


class PendingJob(Generic[R]):
    """A queued or running job of a :class:`WorkerPool`; the deadline was fixed when it was queued."""

    def __init__(self, pool: WorkerPool, job: _Job, timeout: Optional[float]):
        self._pool, self._job, self._timeout = pool, job, timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Ask the job to stop (a queued job is dropped)."""
        self._job.token.cancel(reason)

    def result(self) -> R:
        """Wait for the job until its deadline; on timeout cancel it and raise :class:`JobTimeout`."""
        left = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            return self._job.future.result(timeout=left)
        except FutureTimeout:
            self._job.token.cancel(f"timed out after {self._timeout:g}s")
            self._pool._timed_out()
            raise JobTimeout(f"job did not finish within {self._timeout:g}s and was cancelled") from None
