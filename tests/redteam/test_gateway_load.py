"""Large prompts and vanishing clients against a real gateway over a real sim bridge: an oversized prompt
is refused before any CPU is spent on it, one that cannot fit the context never reaches the bridge, a
1 MB prompt being tokenized does not stop a concurrent stream, and a client that hangs up a non-streamed
request frees the board."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.redteam.gateway_rig import CHAT_MODEL, error_of, gateway, sim_bridge, write_store
from tests.support import wait_for

WORDS = "the quick brown fox jumps over a lazy dog while seven bright lanterns sway gently in the night".split()


def prose(chars: int) -> str:
    """About ``chars`` characters of ordinary words (real tokenizer work, unlike one repeated letter)."""
    text = " ".join(WORDS[i % len(WORDS)] + str(i % 97) for i in range(chars // 6 + 1))
    return text[:chars]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, default_model_dir):
    store = write_store(tmp_path_factory.mktemp("redteam-load"), default_model_dir)
    bridge = sim_bridge(store, "--preload", CHAT_MODEL, "--instances", "2").start()
    gw = gateway([bridge.url], tmp_path_factory.mktemp("exo-home")).start()
    status, body = gw.post_json("/v1/chat/completions", chat("Hello.", max_tokens=2), timeout=120)
    assert status == 200, body  # the first request loads the model's tokenizer into the gateway
    yield bridge, gw
    gw.stop()
    bridge.stop()


def chat(content: str, **fields) -> dict:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}], **fields}


def active(bridge) -> int:
    return bridge.get_json("/health")[1]["active"]


def test_an_8_mb_prompt_is_refused_with_413_before_it_is_tokenized(pair):
    bridge, gw = pair
    status, headers, body = gw.request("POST", "/v1/chat/completions", chat("x" * 8_000_000), timeout=60)
    error = error_of(body)
    assert (status, error["code"], error["type"]) == (413, "prompt_too_large", "invalid_request_error")
    assert "8,000,000 characters" in error["message"] and "RKLLM_MAX_PROMPT_CHARS" in error["message"]


def test_a_prompt_that_cannot_fit_the_context_is_refused_by_the_gateway_itself(pair):
    bridge, gw = pair
    # fits NUM_CTX (8192) alone, not with the reply room asked for
    status, body = gw.post_json("/v1/chat/completions", chat(prose(20_000), max_tokens=8000), timeout=60)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "does not fit the context of 8,192 tokens" in body["error"]["message"]  # the gateway's words
    status, body = gw.post_json("/v1/chat/completions", chat(prose(80_000)), timeout=60)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_a_stream_keeps_flowing_while_a_1_mb_prompt_is_tokenized(pair):
    bridge, gw = pair
    arrivals = []
    measured = threading.Event()

    def read_stream():
        with requests.post(gw.url + "/v1/chat/completions", json=chat("Talk.", stream=True, max_tokens=3000),
                           stream=True, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic())
                if measured.is_set():
                    return  # hanging up ends the stream

    reader = threading.Thread(target=read_stream)
    reader.start()
    wait_for(lambda: len(arrivals) > 20, timeout=30, what="the stream to flow")
    sent = time.monotonic()
    status, body = gw.post_json("/v1/chat/completions", chat(prose(1_000_000)), timeout=120)
    answered = time.monotonic()
    measured.set()
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    during = [t for t in arrivals if sent <= t <= answered]
    edges = [sent, *during, answered]
    longest_pause = max(b - a for a, b in zip(edges, edges[1:], strict=False))
    # side by side in one run: a blocked event loop pauses the stream for the whole tokenization
    assert len(during) > 10 and longest_pause < (answered - sent) / 4, (len(during), longest_pause,
                                                                       answered - sent)
    reader.join(60)


def test_a_client_that_hangs_up_a_non_streamed_request_frees_the_board(pair):
    bridge, gw = pair
    wait_for(lambda: active(bridge) == 0, timeout=30, what="the board idle (earlier requests counted)")
    aborts = bridge.get_json("/health")[1]["aborts_total"]
    body = json.dumps(chat("Talk for a long time.")).encode()  # 4,000 tokens: 20 s on the board
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        wait_for(lambda: active(bridge) == 1, timeout=30, what="the generation running on the board")
    finally:
        sock.close()
    try:
        wait_for(lambda: active(bridge) == 0, timeout=10, what="the board to stop generating after the hang-up")
    except AssertionError as exc:
        logs = f"--- gateway ---\n{gw.log_tail(40)}\n--- bridge ---\n{bridge.log_tail(40)}"
        raise AssertionError(f"{exc}\n{logs}") from None
    assert bridge.get_json("/health")[1]["aborts_total"] == aborts + 1
    wait_for(lambda: "before its reply; generation aborted" in gw.log_tail(100), what="the hang-up logged")
