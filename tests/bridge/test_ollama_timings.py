"""Ollama's durations as the official ``ollama`` client receives them: from the request's arrival (a queued
request included), ``eval_duration`` first to last token, a real ``load_duration``, and a stream that fails
ending with Ollama's ``{"error": ...}`` line."""

from __future__ import annotations

import threading

import ollama
import pytest
import requests

from ..conftest import SIM_MODEL
from ..support import wait_for
from .runtimes import RUNTIMES

CHAT = [{"role": "user", "content": "Hello there"}]


def _check_durations(reply) -> None:
    assert reply.eval_count > 0 and reply.eval_duration > 0  # clients divide one by the other
    assert reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration


def test_a_queued_request_reports_every_duration(start_bridge):
    bridge = start_bridge("--sim-profile", "instant", "--sim-decode-tok-s", "40", "--sim-load-s", "0.5",
                          "--instances", "1", "--no-restore")
    client = ollama.Client(host=bridge.url)
    first = client.chat(model=SIM_MODEL, messages=CHAT, options={"num_predict": 4})
    _check_durations(first)
    assert first.load_duration >= 0.5e9  # this request waited for the (0.5 s) load of the sim model
    blocker = threading.Thread(target=requests.post, args=(bridge.url + "/v1/generate",),
                               kwargs={"json": {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 40},
                                       "timeout": 60})
    blocker.start()
    wait_for(lambda: bridge.get_json("/health")[1]["active"] == 1, what="the blocking request to run")
    queued = {}
    waiter = threading.Thread(target=lambda: queued.update(
        reply=client.generate(model=SIM_MODEL, prompt="Hi", options={"num_predict": 4})))
    waiter.start()
    wait_for(lambda: bridge.get_json("/health")[1]["models"][0]["queued"] == 1, what="the request to queue")
    blocker.join(60)
    waiter.join(60)
    reply = queued["reply"]
    _check_durations(reply)  # before: eval_duration 0 for a request that queued
    assert reply.load_duration == 0  # the model was already loaded


@pytest.mark.skipif("rkllm" not in RUNTIMES, reason="no gcc: the librkllmrt stub cannot be built")
def test_a_stream_that_fails_ends_with_an_error_line(start_bridge):
    from ..native.build import stub_env

    bridge = start_bridge(runtime="rkllm", env=stub_env("1.3", reply_ids=[42, 43, 44, 45], error_after=2))
    with requests.post(bridge.url + "/api/chat", json={"model": SIM_MODEL, "messages": CHAT}, stream=True,
                       timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1].startswith(b'{"error": "')
    with pytest.raises(ollama.ResponseError, match="runtime"):
        for _ in ollama.Client(host=bridge.url).chat(model=SIM_MODEL, messages=CHAT, stream=True):
            pass
