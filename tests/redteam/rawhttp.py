"""Raw-socket clients for the red-team tests: slow clients, malformed requests, reading a whole answer."""

from __future__ import annotations

import json
import socket
import time
from typing import List, Optional, Tuple


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket, timeout: float = 15.0) -> Tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of one answer, read until the server closes or the
    body's Content-Length is in; raises socket.timeout when nothing complete comes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def exchange(port: int, raw: bytes, timeout: float = 15.0) -> Tuple[int, dict, dict]:
    """Send ``raw`` on a fresh connection; the answer with its body parsed as JSON."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock, timeout)
    return status, headers, json.loads(body)


def hold_served_connections(port: int, n: int, timeout: float = 30.0) -> List[socket.socket]:
    """``n`` open keep-alive connections, each proven to be served (a ``GET /health`` answered 200 on it).

    A connection the server refused with 503 (it still counted a just-closed channel it had not reaped
    yet) is replaced, polling until ``timeout``; so afterwards the server holds exactly these ``n``."""
    held: List[socket.socket] = []
    deadline = time.monotonic() + timeout
    while len(held) < n:
        if time.monotonic() > deadline:
            for s in held:
                s.close()
            raise AssertionError(f"only {len(held)} of {n} connections were served within {timeout:g}s")
        sock = connect(port)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status = read_response(sock, timeout=max(1.0, deadline - time.monotonic()))[0]
        if status == 200:
            held.append(sock)
        else:
            sock.close()
            time.sleep(0.05)  # poll pace while the server reaps the stale channel
    return held


class Slowloris:
    """``n`` connections that send a request head one byte per ``period`` seconds, never finishing."""

    HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100_000

    def __init__(self, port: int, n: int):
        self.socks: List[socket.socket] = [connect(port) for _ in range(n)]
        self.sent = 0

    def drip(self) -> None:
        """One more byte on every connection still open."""
        byte = self.HEAD[self.sent:self.sent + 1]
        for s in self.socks:
            try:
                s.send(byte)
            except OSError:
                pass
        self.sent += 1

    def answers(self, timeout: float = 0.5) -> List[Optional[int]]:
        """The status each connection was answered with (None: nothing yet or closed without one)."""
        out = []
        for s in self.socks:
            try:
                out.append(read_response(s, timeout)[0])
            except (OSError, ValueError, IndexError):
                out.append(None)
        return out

    def close(self) -> None:
        for s in self.socks:
            s.close()


def run_for(seconds: float, step, period: float = 1.0) -> None:
    """Call ``step()`` every ``period`` seconds for ``seconds`` (the slow client's pace, not a sync)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        step()
        time.sleep(period)
