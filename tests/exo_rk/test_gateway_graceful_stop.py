"""Stopping the gateway the way systemd and Kubernetes do: a real gateway process over a real sim bridge,
a real SSE stream in flight, real signals."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import requests

from tests.redteam.gateway_rig import CHAT_MODEL, gateway, sim_bridge, write_store
from tests.support import wait_for


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, default_model_dir):
    b = sim_bridge(write_store(tmp_path_factory.mktemp("graceful-gw"), default_model_dir)).start()
    yield b
    b.stop()


def _stream(gw, max_tokens: int, chunks: list) -> threading.Thread:
    """An SSE chat read on a thread; each data payload is appended to ``chunks`` (parsed, or "[DONE]")."""
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Talk."}], "max_tokens": max_tokens,
            "stream": True}

    def read():
        with requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    payload = line[6:].decode()
                    chunks.append(payload if payload == "[DONE]" else json.loads(payload))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _finish_reason(chunks: list):
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c != "[DONE]" and c.get("choices")]
    return next((r for r in reversed(reasons) if r), None)


def _exit_status(gw, timeout: float = 30.0) -> int:
    wait_for(lambda: gw.proc.poll() is not None, timeout=timeout, what="the gateway to exit")
    return gw.proc.returncode


def test_sigterm_lets_a_running_stream_finish_refuses_new_requests_and_exits_0(bridge, tmp_path):
    gw = gateway([bridge.url], tmp_path).start()
    try:
        chunks: list = []
        reader = _stream(gw, 400, chunks)  # 2 s at the bridge's 200 tok/s
        wait_for(lambda: len(chunks) > 2, timeout=60, what="the stream to flow")
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(gw.refuses_connections, what="new connections to be refused")
        reader.join(timeout=30)
        assert chunks[-1] == "[DONE]" and _finish_reason(chunks) == "length", chunks[-3:]
        assert _exit_status(gw) == 0
        log = gw.log_tail(200)
        assert "Traceback" not in log and "not accepting new requests; 1 in progress" in log, log
    finally:
        gw.stop()


def test_a_stream_still_running_after_the_grace_period_is_ended_and_its_generation_aborted(bridge, tmp_path):
    gw = gateway([bridge.url], tmp_path, env={"EXO_RK_SHUTDOWN_GRACE": "0.3"}).start()
    try:
        chunks: list = []
        reader = _stream(gw, 3000, chunks)  # 15 s: far beyond the grace period
        wait_for(lambda: len(chunks) > 2, timeout=60, what="the stream to flow")
        gw.proc.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        # OpenAI's word for an incomplete reply ("shutdown" maps to "length"), long before the 3,000 asked
        assert chunks[-1] == "[DONE]" and _finish_reason(chunks) == "length", chunks[-3:]
        assert len(chunks) < 1000
        assert _exit_status(gw) == 0
        assert "still running after the 0.3 s grace period" in gw.log_tail(200)
        assert "Traceback" not in gw.log_tail(200)
        # the cut reply's generation was aborted on the board too
        wait_for(lambda: bridge.get_json("/health")[1]["active"] == 0, timeout=10, what="the board freed")
    finally:
        gw.stop()
