"""The waitress front both servers run behind (the bridge and ``image-engine serve``).

Waitress alone lets a slow client hold a connection for ever (each byte resets its inactivity timer),
stops accepting once ``connection_limit`` sockets are open (new clients then hang unanswered) and
answers its own refusals (413, 431, bad request line) in plain text. This front adds:

- a read deadline per request that no trickle of bytes can reset: the head must arrive within
  ``header_timeout_s`` of its first byte, the whole request within ``body_timeout_s``; then 408 (JSON)
  and the connection is closed;
- ``max_connections``: beyond it a new connection gets a JSON 503 with ``Retry-After`` at once;
- JSON bodies ``{"error": {"code", "message"}}`` for waitress's own refusals;
- lanes: a request goes to the thread pool of the first lane whose prefix matches its path (``/health``
  and ``/metrics`` on a small pool of their own that queued work can never occupy; image jobs on theirs),
  the rest to the default pool. A lane with a bound answers 429 (JSON, ``Retry-After``) once that many
  of its requests are in flight, on the ops pool, before any thread of the lane is taken.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 500
OPS_PATHS = ("/health", "/metrics")  # /health/ready included
RETRY_AFTER_S = "1"

_CODES = {400: "bad_request", 408: "request_timeout", 413: "payload_too_large", 429: "queue_full",
          431: "header_fields_too_large", 500: "internal_error", 501: "not_implemented", 503: "unavailable"}


def json_error_bytes(status: int, reason: str, message: str, extra_headers: Sequence[tuple] = ()) -> bytes:
    """A complete HTTP/1.1 response carrying the JSON error shape, closing the connection."""
    body = json.dumps({"error": {"code": _CODES.get(status, "error"), "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in extra_headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class LaneFull(Error):
    """A lane already has as many requests in flight as it may hold."""

    code = 429
    reason = "Too Many Requests"


class JsonErrorTask(ErrorTask):
    """Waitress's refusals (and the lanes' 429) as JSON; 429/503 carry ``Retry-After``."""

    def execute(self) -> None:
        error = self.request.error
        message = f"{error.reason}: {error.body}" if error.body else error.reason
        body = json.dumps({"error": {"code": _CODES.get(error.code, "error"), "message": message}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if error.code in (429, 503):
            self.response_headers.append(("Retry-After", RETRY_AFTER_S))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


@dataclass(frozen=True)
class Lane:
    """Requests whose path starts with one of ``prefixes`` run on ``threads`` threads of their own; with
    ``max_in_flight`` set, one more gets a 429 without taking a thread."""

    name: str
    prefixes: tuple
    threads: int
    max_in_flight: Optional[int] = None

    def matches(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.prefixes)


class _LanePool:
    def __init__(self, lane: Lane):
        self.lane = lane
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(lane.threads)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.rejected = 0

    def admit(self) -> bool:
        with self._lock:
            if self.lane.max_in_flight is not None and self.in_flight >= self.lane.max_in_flight:
                self.rejected += 1
                return False
            self.in_flight += 1
            return True

    def admit_unbounded(self) -> None:
        """Count a request that must run here whatever the bound (a refusal answered on this pool)."""
        with self._lock:
            self.in_flight += 1

    def done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def stats(self) -> dict:
        with self._lock:
            return {"threads": self.lane.threads, "in_flight": self.in_flight, "max_in_flight": self.lane.max_in_flight,
                    "rejected": self.rejected}


class _LaneTask:
    """What a lane's dispatcher runs: the channel's next request, counted in the lane while it runs."""

    def __init__(self, pool: Optional[_LanePool], channel: HTTPChannel):
        self.pool, self.channel = pool, channel

    def service(self) -> None:
        try:
            self.channel.service()
        finally:
            if self.pool is not None:
                self.pool.done()

    def cancel(self) -> None:
        self.channel.cancel()
        if self.pool is not None:
            self.pool.done()


class FrontChannel(HTTPChannel):
    """A channel that remembers when the request it is reading began, for the read deadline."""

    error_task_class = JsonErrorTask
    reading_since: Optional[float] = None

    def received(self, data: bytes) -> bool:
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.reading_since = None
        elif self.request is not before or self.reading_since is None:
            self.reading_since = time.monotonic()
        return result

    def read_overdue(self, now: float, header_s: float, body_s: float) -> Optional[str]:
        """Why this channel's request has run out of time to arrive, or None."""
        if self.reading_since is None or self.requests or self.request is None:
            return None
        if not self.request.headers_finished and now - self.reading_since > header_s:
            return f"the request head did not arrive within {header_s:g} s"
        if now - self.reading_since > body_s:
            return f"the request did not arrive within {body_s:g} s"
        return None


class FrontServer(TcpWSGIServer):
    """``TcpWSGIServer`` with read deadlines, a JSON connection limit and lanes (see the module doc)."""

    channel_class = FrontChannel

    def __init__(self, application, adj: Adjustments, lanes: Iterable[Lane], header_timeout_s: float,
                 body_timeout_s: float, max_connections: int):
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self._lanes: List[_LanePool] = [_LanePool(lane) for lane in lanes]
        self.refused_connections = 0
        self.timed_out_reads = 0
        default = ThreadedTaskDispatcher()
        default.set_thread_count(adj.threads)
        super().__init__(application, map={}, dispatcher=default, adj=adj)
        self._ops = next((p for p in self._lanes if p.lane.name == "ops"), None)

    # -- dispatch -------------------------------------------------------------------------------------

    def add_task(self, channel) -> None:
        request = channel.requests[0] if channel.requests else None
        if request is not None and request.error and self._ops is not None:
            self._ops.admit_unbounded()  # waitress's own refusal: quick, and no lane's business
            self._ops.dispatcher.add_task(_LaneTask(self._ops, channel))
            return
        path = (getattr(request, "path", "") or "") if request is not None else ""
        pool = next((p for p in self._lanes if p.lane.matches(path)), None) if request is not None else None
        if pool is None:
            self.task_dispatcher.add_task(_LaneTask(None, channel))
            return
        if not pool.admit():
            request.error = LaneFull(f"{pool.lane.max_in_flight} {pool.lane.name} requests are already in "
                                     "progress; retry later")
            target = self._ops or pool
            target.admit_unbounded()
            target.dispatcher.add_task(_LaneTask(target, channel))
            return
        pool.dispatcher.add_task(_LaneTask(pool, channel))

    def lane_stats(self) -> Dict[str, dict]:
        """Threads and requests in flight per lane (``default`` is everything no lane claims)."""
        out = {p.lane.name: p.stats() for p in self._lanes}
        out["default"] = {"threads": self.adj.threads}
        out["connections"] = {"open": len(self.active_channels), "max": self.max_connections,
                              "refused": self.refused_connections, "read_timeouts": self.timed_out_reads}
        return out

    # -- connections ----------------------------------------------------------------------------------

    def handle_accept(self) -> None:
        if len(self.active_channels) < self.max_connections:
            super().handle_accept()
            return
        try:
            accepted = self.accept()
        except OSError:
            return
        if accepted is None:
            return
        conn, _ = accepted
        self.refused_connections += 1
        if self.refused_connections % 100 == 1:
            log.warning("%d connections open (limit %d): refusing new ones with 503", len(self.active_channels),
                        self.max_connections)
        _refuse(conn, json_error_bytes(503, "Service Unavailable", f"too many open connections (limit "
                                       f"{self.max_connections}); retry later", [("Retry-After", RETRY_AFTER_S)]))

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        mono = time.monotonic()
        for channel in list(self.active_channels.values()):
            why = channel.read_overdue(mono, self.header_timeout_s, self.body_timeout_s)
            if why is None:
                continue
            self.timed_out_reads += 1
            log.info("closing connection from %s: %s", channel.addr, why)
            channel.request = None
            channel.reading_since = None
            try:
                channel.write_soon(json_error_bytes(408, "Request Timeout", why))
            except Exception:  # noqa: BLE001 - the client may be gone already; the channel closes anyway
                channel.will_close = True
            channel.close_when_flushed = True

    # -- stopping -------------------------------------------------------------------------------------

    _draining = False
    _stop_requested = False

    def stop_accepting(self) -> None:
        """Close the listening socket at the loop's next turn (from any thread): new connections are refused,
        the open ones keep being served."""
        self._draining = True
        self.pull_trigger()

    def request_stop(self) -> None:
        """End ``run()`` at the loop's next turn (from any thread)."""
        self._stop_requested = True
        self.pull_trigger()

    def busy_channels(self) -> int:
        """Connections with a request in progress or a reply not yet flushed."""
        return sum(1 for ch in list(self.active_channels.values()) if ch.requests or ch.total_outbufs_len)

    def run(self) -> None:
        """Serve until ``request_stop()``. Signals are the caller's business: nothing here turns one into an
        exception in the middle of joining threads."""
        try:
            while self._map and not self._stop_requested:
                if self._draining and self.accepting:
                    self.accepting = False
                    wasyncore.dispatcher.close(self)  # the listening socket only; the trigger stays
                wasyncore.loop(timeout=self.adj.asyncore_loop_timeout, map=self._map,
                               use_poll=self.adj.asyncore_use_poll, count=1)
        except (SystemExit, KeyboardInterrupt):  # a caller whose signal handler raises, as waitress allows
            self.task_dispatcher.shutdown()
        finally:
            for pool in self._lanes:
                pool.dispatcher.shutdown()


def _refuse(conn: socket.socket, response: bytes) -> None:
    """Answer a connection we will not serve and close it, without blocking the event loop."""
    try:
        conn.setblocking(False)
        try:
            conn.recv(65536)  # what the client already sent, so closing does not reset the answer away
        except OSError:
            pass
        conn.send(response)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def create_front_server(app: Callable, *, host: str, port: int, threads: int, lanes: Sequence[Lane] = (),
                        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                        max_connections: int = DEFAULT_MAX_CONNECTIONS, **adjustments) -> FrontServer:
    """A listening :class:`FrontServer` for ``app`` on ``host:port`` (0: a free port)."""
    adj = Adjustments(host=host, port=port, threads=threads,
                      # waitress must keep accepting past our limit so that we can answer the 503 ourselves
                      connection_limit=max_connections + 64,
                      cleanup_interval=1, **adjustments)
    return FrontServer(app, adj, lanes, header_timeout_s, body_timeout_s, max_connections)


def ops_lane(threads: int = 2, paths: Sequence[str] = OPS_PATHS) -> Lane:
    """The lane of liveness and metrics: its own threads, never shared with queued work."""
    return Lane("ops", tuple(paths), threads)
