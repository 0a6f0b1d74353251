"""A bridge that dies mid-reply: the gateway's client sees the reply cut short, never a hang or a fake stop."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import requests

from tests.exo_rk.bridges import LONG_SIM_MODEL, SIM_DECODE_TOK_S
from tests.support import ServerProcess, bridge_argv, wait_for

BODY = {"model": LONG_SIM_MODEL, "messages": [{"role": "user", "content": "Talk for a long time."}]}


@pytest.fixture
def pair(sim_store, tmp_path):
    bridge = ServerProcess(bridge_argv(sim_store, "sim", "--sim-profile", "instant", "--sim-decode-tok-s",
                                       SIM_DECODE_TOK_S, "--no-images")).start()
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url]
    gateway = ServerProcess(argv, env={"EXO_HOME": str(tmp_path / "home"), "RKLLM_SERVERS": ""}).start()
    yield bridge, gateway
    gateway.stop()
    bridge.stop()


def test_stream_cut_by_a_dead_bridge_ends_with_an_error(pair):
    bridge, gateway = pair
    events = []
    with requests.post(gateway.url + "/v1/chat/completions", json={**BODY, "stream": True}, stream=True,
                       timeout=30) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith(b"data: {") and b'"content": "' in line and len(events) < 3:
                events.append(line)
            if len(events) == 3:
                break
        bridge.kill()
        rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    payloads = [json.loads(line[6:]) for line in rest[:-1]]
    assert any("error" in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "error"


def test_non_streamed_reply_cut_by_a_dead_bridge_fails_loudly(pair):
    """503 when the bridge died before the first token, 502 after it: never a 200 with a cut reply."""
    bridge, gateway = pair
    result = {}
    t = threading.Thread(target=lambda: result.update(r=requests.post(gateway.url + "/v1/chat/completions",
                                                                      json=BODY, timeout=30)))
    t.start()
    wait_for(lambda: bridge.get_json("/health")[1]["active"] == 1, timeout=60,
             what="generation running on the bridge (the first request loads the tokenizer)")
    bridge.kill()
    t.join(30)
    status, error = result["r"].status_code, result["r"].json()["error"]
    assert (status, error["code"]) in ((502, "bridge_failed"), (503, "bridge_unavailable")), (status, error)
