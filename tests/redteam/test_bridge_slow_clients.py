"""Slow and greedy clients against a real bridge: 200 slowloris connections never stop the health
probes and are closed at their head deadline with a JSON 408; connections beyond --max-connections get
a JSON 503 with Retry-After at once."""

from __future__ import annotations

import json
import urllib.error

from ..support import wait_for
from .rawhttp import Slowloris, connect, hold_served_connections, read_response, run_for

HEAD_DEADLINE_S = 3


def probe(server) -> object:
    try:
        return server.get_json("/health", timeout=5)[0]
    except (OSError, urllib.error.URLError) as exc:
        return repr(exc)


def slowloris_against(server, connections: int = 200) -> list:
    """Keep ``connections`` slow heads trickling past the head deadline, probing /health each second;
    returns the probes' outcomes. Afterwards every slow connection has been answered 408 and closed."""
    slow = Slowloris(server.port, connections)
    probes: list = []
    try:
        run_for(HEAD_DEADLINE_S + 3, lambda: (slow.drip(), probes.append(probe(server))))
        wait_for(lambda: server.get_json("/health")[1]["threads"]["connections"]["read_timeouts"] >= connections,
                 timeout=30, what="every slow head closed at its deadline")
        answers = slow.answers()
        assert answers.count(408) == connections, answers
    finally:
        slow.close()
    return probes


def test_200_slowloris_connections_leave_health_answering(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--header-timeout", str(HEAD_DEADLINE_S))
    probes = slowloris_against(b)
    assert probes and probes == [200] * len(probes), probes


def test_a_slow_head_gets_a_json_408(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--header-timeout", "1")
    with connect(b.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        status, headers, body = read_response(sock, timeout=30)
    assert status == 408 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_connections_beyond_the_limit_get_a_json_503_with_retry_after(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--max-connections", "20")
    held = hold_served_connections(b.port, 20)
    extra = [connect(b.port) for _ in range(5)]
    try:
        answers = [read_response(s, timeout=30) for s in extra]
        for status, headers, body in answers:
            assert status == 503 and headers["retry-after"] == "1"
            assert "too many open connections" in json.loads(body)["error"]["message"]
    finally:
        for s in held + extra:
            s.close()
    wait_for(lambda: b.get_json("/health")[0] == 200, timeout=30, what="serving again once they closed")
