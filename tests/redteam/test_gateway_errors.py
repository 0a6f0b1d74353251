"""Hostile and broken requests against a real gateway process: every refusal is JSON in OpenAI's shape,
including the ones aiohttp's HTTP parser makes before any handler runs; no bridge address or exception
repr reaches a client; 429 and 503 say when to retry."""

from __future__ import annotations

import asyncio
import socket

import pytest

from exo_rk.client import BridgeClient, GenerationParams
from tests.redteam.gateway_rig import CHAT_MODEL, error_of, gateway, raw_exchange, sim_bridge, write_store
from tests.support import wait_for

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory, default_model_dir):
    return write_store(tmp_path_factory.mktemp("redteam-errors"), default_model_dir)


@pytest.fixture(scope="module")
def busy_pair(store, tmp_path_factory):
    """A gateway over one bridge that runs one request and queues none (so a second one is a 429)."""
    bridge = sim_bridge(store, "--preload", CHAT_MODEL, "--queue-max", "0").start()
    gw = gateway([bridge.url], tmp_path_factory.mktemp("exo-home")).start()
    yield bridge, gw
    gw.stop()
    bridge.stop()


def request_bytes(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


@pytest.mark.parametrize("name, raw, status, code", [
    ("duplicate Content-Length",
     request_bytes("POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 2\nContent-Length: 2\n", b"{}"),
     400, "bad_http_request"),
    ("Content-Length with Transfer-Encoding",
     request_bytes("POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 2\n"
                   "Transfer-Encoding: chunked\n", b"0\r\n\r\n"), 400, "bad_http_request"),
    ("a 100 KB header",
     request_bytes(f"GET /v1/models HTTP/1.1\nHost: x\nX-Big: {'a' * 100_000}\n"), 431, "headers_too_large"),
    ("a bad request line", b"NOT AN HTTP REQUEST\r\n\r\n", 400, "bad_request_line"),
])
def test_requests_the_http_parser_refuses_are_answered_in_json(busy_pair, name, raw, status, code):
    _, gw = busy_pair
    got, headers, body = raw_exchange(gw.port, raw)
    assert (got, headers.get("Content-Type", "").split(";")[0]) == (status, "application/json"), (name, body)
    error = error_of(body)
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert gw.get_json("/health")[0] == 200  # and the gateway serves on


def test_a_body_nested_100000_deep_is_a_400_not_a_crash(busy_pair):
    _, gw = busy_pair
    status, headers, body = gw.request("POST", "/v1/chat/completions", b"[" * 100_000)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert error_of(body)["code"] == "invalid_json" and "nested" in error_of(body)["message"]


def test_a_busy_bridge_is_a_429_rate_limit_error_with_retry_after(busy_pair):
    bridge, gw = busy_pair

    async def hold_and_ask():
        other = BridgeClient(bridge.url)  # someone else's long request takes the only slot
        events = other.stream(CHAT_MODEL, [9707, 11, 1246], GenerationParams())
        try:
            await events.__anext__()
            return await asyncio.to_thread(gw.request, "POST", "/v1/chat/completions", CHAT)
        finally:
            await events.aclose()
            await other.close()

    status, headers, body = asyncio.run(hold_and_ask())
    error = error_of(body)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert bridge.url not in error["message"] and "127.0.0.1" not in error["message"]
    wait_for(lambda: bridge.get_json("/health")[1]["active"] == 0, what="the held request to end")


@pytest.mark.parametrize("count", [1, 2], ids=["one bridge", "a pool"])
def test_unreachable_bridges_are_a_clean_503_and_the_detail_goes_to_the_log(tmp_path, count):
    dead = []
    for _ in range(count):  # ports nothing listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead.append(f"http://127.0.0.1:{s.getsockname()[1]}")
    with gateway(dead, tmp_path / "home", {"RKLLM_HEALTH_INTERVAL": "0.2"}) as gw:
        status, headers, body = gw.request("POST", "/v1/chat/completions", CHAT, timeout=30)
        error = error_of(body)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert (error["type"], error["code"]) == ("service_unavailable_error", "bridge_unavailable")
        for leak in ("127.0.0.1", "http://", "ClientConnectorError", "ConnectionKey", "Error("):
            assert leak not in error["message"], error["message"]
        rid = headers["X-Request-Id"]
        assert rid in error["message"]
        # the log names the request, and the addresses that failed are in the log, not in the answer
        wait_for(lambda: any(rid in line for line in gw.log_tail(200).splitlines()), what="the request id logged")
        assert all(url.removeprefix("http://") in gw.log_tail(200) for url in dead)
