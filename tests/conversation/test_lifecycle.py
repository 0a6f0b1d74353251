"""Model lifecycle over real HTTP: keep_alive idle unload (per request and bridge default), Ollama's
load/unload requests, eviction of idle models under --max-memory-mb, and restore after a restart."""

from __future__ import annotations

import threading

import requests

from ..conftest import SIM_MODEL, SIM_MODEL_2
from ..support import wait_for

CHAT = [{"role": "user", "content": "Hello there"}]


def loaded(b) -> dict:
    return {m["name"]: m for m in b.get_json("/api/ps")[1]["models"]}


def chat(b, model=SIM_MODEL, **extra):
    status, body = b.post_json("/api/chat", {"model": model, "messages": CHAT, "stream": False, **extra})
    assert status == 200, body
    return body


def test_keep_alive_per_request_unloads_after_the_idle_time(start_bridge):
    b = start_bridge("--sim-profile", "instant")
    chat(b, keep_alive=-1)
    assert loaded(b)[SIM_MODEL]["expires_at"] is None and loaded(b)[SIM_MODEL]["keep_alive"] == "forever"
    chat(b, keep_alive="1s")  # the last request's keep_alive wins, as in Ollama
    assert loaded(b)[SIM_MODEL]["expires_at"] is not None and loaded(b)[SIM_MODEL]["keep_alive"] == "1s"
    wait_for(lambda: SIM_MODEL not in loaded(b), timeout=10, what="idle unload after 1s")
    chat(b, SIM_MODEL_2, keep_alive=0)
    wait_for(lambda: SIM_MODEL_2 not in loaded(b), timeout=10, what="unload right after a keep_alive 0 request")
    health = b.get_json("/health")[1]
    assert health["models"] == []


def test_bridge_default_keep_alive_and_ollama_load_unload_requests(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--keep-alive", "500ms")
    status, body = b.post_json("/v1/chat/completions", {"model": SIM_MODEL, "messages": CHAT})
    assert status == 200
    wait_for(lambda: SIM_MODEL not in loaded(b), timeout=10, what="unload after the default keep_alive")
    status, body = b.post_json("/api/generate", {"model": SIM_MODEL_2, "keep_alive": "1h"})
    assert status == 200 and body["done_reason"] == "load" and loaded(b)[SIM_MODEL_2]["keep_alive"] == "3600s"
    status, body = b.post_json("/api/chat", {"model": SIM_MODEL_2, "messages": [], "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload"
    wait_for(lambda: SIM_MODEL_2 not in loaded(b), timeout=10, what="unload request")


def test_bad_keep_alive_is_a_400(start_bridge):
    b = start_bridge("--sim-profile", "instant")
    for value in ("soon", True, [1], "5x"):
        status, body = b.post_json("/api/chat", {"model": SIM_MODEL, "messages": CHAT, "keep_alive": value})
        assert status == 400 and body["error"]["code"] == "invalid_parameter", value
    assert b.get_json("/health")[0] == 200


def test_memory_pressure_evicts_the_idle_model_never_a_serving_one(start_bridge):
    # the instant profile's models take 100 MB each: only one fits
    b = start_bridge("--sim-profile", "instant", "--sim-decode-tok-s", "25", "--max-memory-mb", "150")
    chat(b, SIM_MODEL, options={"num_predict": 2})
    chat(b, SIM_MODEL_2, options={"num_predict": 2})
    assert list(loaded(b)) == [SIM_MODEL_2], "the idle model made room"
    opened = threading.Event()

    def long_stream():
        with requests.post(b.url + "/api/chat", json={"model": SIM_MODEL_2, "messages": CHAT}, stream=True,
                           timeout=60) as r:
            for _ in r.iter_lines():
                opened.set()

    t = threading.Thread(target=long_stream)
    t.start()
    wait_for(opened.is_set, timeout=10, what="stream running")
    status, body = b.post_json("/api/chat", {"model": SIM_MODEL, "messages": CHAT, "stream": False})
    assert status == 503 and body["error"]["code"] == "insufficient_memory"
    assert "--max-memory-mb 150" in body["error"]["message"]
    t.join(timeout=30)
    assert list(loaded(b)) == [SIM_MODEL_2]


def test_restart_restores_the_loaded_models(start_bridge, tmp_path):
    state = tmp_path / "state.json"
    first = start_bridge("--sim-profile", "instant", "--state-file", str(state))
    chat(first, SIM_MODEL, keep_alive="1h")
    chat(first, SIM_MODEL_2)
    first.stop()
    again = start_bridge("--sim-profile", "instant", "--state-file", str(state))
    wait_for(lambda: set(loaded(again)) == {SIM_MODEL, SIM_MODEL_2}, timeout=20, what="models restored")
    assert loaded(again)[SIM_MODEL]["keep_alive"] == "3600s"
    assert "restoring 2 model(s)" in again.log_tail(200)
    again.stop()
    skipped = start_bridge("--sim-profile", "instant", "--state-file", str(state), "--no-restore")
    assert loaded(skipped) == {} and "restoring" not in skipped.log_tail(200)
