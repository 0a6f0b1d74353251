"""What the server framework refuses on its own is JSON too: deep nesting, an oversized head, a bad
request line, a body over waitress's cap; every 429/503 says when to retry."""

from __future__ import annotations

import requests

from ..conftest import SIM_MODEL
from .rawhttp import exchange

DEEP = b"[" * 100_000


def test_100000_nested_brackets_are_a_400_json(plain_bridge):
    b = plain_bridge
    for path in ("/v1/chat/completions", "/api/chat", "/v1/generate", "/generate"):
        r = requests.post(b.url + path, data=DEEP, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", (path, r.text[:200])
    assert b.get_json("/health")[0] == 200


def test_waitress_refusals_are_json(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--max-body-bytes", "1000")
    cases = {
        431: b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
        400: b"GARBAGE\r\n\r\n",
        413: b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    }
    for want, raw in cases.items():
        status, headers, body = exchange(b.port, raw)
        assert status == want and headers["content-type"] == "application/json", (want, status, body)
        assert body["error"]["code"] and body["error"]["message"]


def test_queue_full_429_carries_retry_after(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--sim-decode-tok-s", "5", "--queue-max", "0")
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 50}
    with requests.post(b.url + "/v1/generate", json=body, stream=True, timeout=60) as running:
        next(running.iter_lines())  # the first token: the only handle is busy
        r = requests.post(b.url + "/v1/generate", json=body, timeout=30)
        assert r.status_code == 429 and r.headers["Retry-After"] and r.json()["error"]["code"] == "queue_full"
