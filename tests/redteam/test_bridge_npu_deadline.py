"""--request-timeout holds while a request waits for the NPU: the wait is abandoned at the deadline
(finish 'timeout'), not after the image work ahead of it."""

from __future__ import annotations

import json
import threading
import time

import requests

from rkllama_bridge.runtimes.sim import SimRuntime
from rkllama_bridge.service import BridgeService, ServiceOptions
from rkllama_bridge.store import ModelStore

from ..conftest import SIM_MODEL
from ..support import wait_for
from .conftest import png

ASK = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 40}


def test_a_request_waiting_for_a_held_npu_ends_at_its_deadline(sim_models_dir):
    store = ModelStore(sim_models_dir)
    runtime = SimRuntime("instant", tokenizer_for=lambda n: store.get(n).tokenizer)
    svc = BridgeService(store, runtime, ServiceOptions(request_timeout_s=0.5, keep_alive_s=None))
    stored = store.get(SIM_MODEL)
    ids = stored.tokenizer.encode_chat(ASK["messages"])
    held = svc.arbiter.acquire("image")  # an image job holding the NPU for as long as this test likes
    events: list = []
    try:
        generation = svc.start(SIM_MODEL, ids, svc.params_for(stored, {"max_new_tokens": 40}, len(ids)))
        reader = threading.Thread(target=lambda: events.extend(generation))
        reader.start()
        reader.join(60)
        assert not reader.is_alive(), "the reply waited for the NPU past its deadline"
    finally:
        svc.arbiter.release(held)
    assert events[-1].finish_reason == "timeout" and events[-1].usage["completion_tokens"] == 0
    assert svc.arbiter.snapshot()["waiting"] == 0, "the abandoned wait left the NPU queue"
    svc.close()


def test_request_timeout_holds_while_npu_image_work_keeps_the_npu(start_bridge, npu_sr_env, tmp_path):
    hold = tmp_path / "npu-busy"
    b = start_bridge("--sim-profile", "instant", "--request-timeout", "1",
                     env={**npu_sr_env, "IMAGE_ENGINE_FAKE_RKNN_HOLD": str(hold)})
    assert b.post_json("/v1/generate", {**ASK, "max_new_tokens": 1})[0] == 200  # loaded and warm
    hold.touch()  # from now on the fake RKNNLite's inference waits until this file is gone: one long NPU call
    sr = threading.Thread(target=lambda: requests.post(b.url + "/image/superres", files={
        "file": ("a.png", png(64, 64), "image/png")}, timeout=120))
    sr.start()
    try:
        wait_for(lambda: b.get_json("/health")[1]["npu"]["busy"] == ["image"], timeout=60,
                 what="the SR tile holding the NPU")
        started = time.monotonic()
        r = requests.post(b.url + "/v1/generate", json=ASK, timeout=30)
        took = time.monotonic() - started
        last = [json.loads(x) for x in r.text.splitlines() if x][-1]
        assert r.status_code == 200 and last["finish_reason"] == "timeout", last
        assert last["usage"]["completion_tokens"] == 0
        assert b.get_json("/health")[1]["npu"]["busy"] == ["image"], "the reply came while the NPU was held"
        print(f"reply {took:.3f} s after it was sent, deadline 1 s")
    finally:
        hold.unlink()
        sr.join(120)
