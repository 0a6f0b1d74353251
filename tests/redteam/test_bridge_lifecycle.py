"""The model lifecycle under races, in a real bridge: an unload racing new requests never leaves two
copies of a model alive and memory accounting always equals the handles the runtime holds; 20,000
unknown model names leave no per-name state behind."""

from __future__ import annotations

import http.client
import json
import threading

import requests

from ..conftest import SIM_MODEL
from ..support import wait_for

ASK = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}]}
SIM_HANDLE_MB = 100  # the instant profile's memory per handle


def handles_and_memory(b) -> tuple:
    health = b.get_json("/health")[1]
    alive = health["runtime"]["handles"]["alive"].get(SIM_MODEL, 0)
    return alive, health["memory"]["accounted_mb"], health["runtime"]["handles"]["peak"].get(SIM_MODEL, 0)


def test_unload_racing_new_requests_never_leaves_two_copies(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--sim-load-s", "0.2", "--sim-decode-tok-s", "25")
    samples = []
    for _ in range(4):
        with requests.post(b.url + "/v1/generate", json={**ASK, "max_new_tokens": 25}, stream=True,
                           timeout=60) as running:
            lines = running.iter_lines()
            next(lines)  # generating: the model is serving
            unload = threading.Thread(target=lambda: b.post_json("/unload_model", {"model_name": SIM_MODEL}))
            unload.start()
            wait_for(lambda: [m["state"] for m in b.get_json("/health")[1]["lifecycle"]] == ["draining"],
                     what="unload waiting for the running request")
            late = threading.Thread(target=lambda: samples.append(b.post_json(
                "/v1/chat/completions", {**ASK, "max_tokens": 3})[0]))
            late.start()  # arrives while the model drains: waits for it to be gone, then loads it again
            samples.append(handles_and_memory(b))
            list(lines)
        unload.join(60)
        late.join(60)
        samples.append(handles_and_memory(b))
    statuses = [s for s in samples if isinstance(s, int)]
    assert statuses == [200] * 4
    for alive, accounted, peak in (s for s in samples if isinstance(s, tuple)):
        assert peak == 1, samples
        assert accounted >= alive * SIM_HANDLE_MB, samples  # never less counted than held
    alive, accounted, _ = handles_and_memory(b)
    assert alive == 1 and accounted == alive * SIM_HANDLE_MB


def test_2000_unknown_model_names_leave_no_per_name_state(plain_bridge):
    b = plain_bridge
    before = b.get_json("/health")[1]["memory"]["tracked_models"]
    names = [f"no-such-model-{i}" for i in range(2_000)]
    errors: list = []

    def ask(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=60)
        for name in chunk:
            conn.request("POST", "/api/chat", json.dumps({"model": name, "messages": ASK["messages"]}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            if resp.status != 404 or body["error"]["code"] != "model_not_found":
                errors.append((resp.status, body))
        conn.close()

    workers = [threading.Thread(target=ask, args=(names[i::4],)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(600)
    assert errors == []
    assert b.get_json("/health")[1]["memory"]["tracked_models"] == before
    assert b.post_json("/v1/chat/completions", {**ASK, "max_tokens": 2})[0] == 200
    assert b.get_json("/health")[1]["memory"]["tracked_models"] == 1  # the one model really loaded
