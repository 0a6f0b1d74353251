"""The NPU arbiter: an LLM stream (sim twin) and a fake image job at the same time never overlap in the
runtimes' call logs, take turns at token / step granularity, and the waits show in /metrics."""

from __future__ import annotations

import threading
import time

from rkllama_bridge.arbiter import NpuArbiter
from rkllama_bridge.runtimes.sim import SimRuntime
from rkllama_bridge.service import BridgeService, ServiceOptions, TokenEvent
from rkllama_bridge.store import ModelStore

from ..conftest import SIM_MODEL
from ..support import wait_for

IMAGE_STEPS = 8


def image_job(arbiter: NpuArbiter, log: list) -> None:
    """A stand-in for denoising steps: each step holds the NPU for a few milliseconds of work."""
    for _ in range(IMAGE_STEPS):
        with arbiter.turn("image"):
            start = time.monotonic()
            deadline = start + 0.004
            while time.monotonic() < deadline:  # busy work, as a step keeps the NPU busy
                pass
            log.append(("image", start, time.monotonic()))


def overlapping(a: list, b: list) -> list:
    return [(x, y) for x in a for y in b if x[1] < y[2] and y[1] < x[2]]


def run_both(concurrent: bool, sim_models_dir):
    store = ModelStore(sim_models_dir)
    runtime = SimRuntime("instant", decode_tok_s=200, tokenizer_for=lambda n: store.get(n).tokenizer)
    svc = BridgeService(store, runtime, ServiceOptions(npu_concurrent=concurrent, keep_alive_s=None))
    handle = svc.load(SIM_MODEL).queue.handles[0]
    handle.trace = []
    ids = store.get(SIM_MODEL).tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    gen = svc.start(SIM_MODEL, ids, svc.params_for(store.get(SIM_MODEL), {"max_new_tokens": 40}, len(ids)))
    events = iter(gen)
    first = next(events)
    assert isinstance(first, TokenEvent)
    image_log: list = []
    worker = threading.Thread(target=image_job, args=(svc.arbiter, image_log))
    worker.start()
    rest = list(events)
    worker.join(timeout=30)
    svc.close()
    return svc, handle.trace, image_log, rest


def test_llm_and_image_steps_never_overlap_and_interleave(sim_models_dir):
    svc, llm_log, image_log, rest = run_both(False, sim_models_dir)
    assert rest[-1].finish_reason == "length" and len(llm_log) == 40 and len(image_log) == IMAGE_STEPS
    assert overlapping(llm_log, image_log) == []
    # the image steps ran while the reply was being generated (token-level turns), not after it
    assert image_log[-1][2] < llm_log[-1][1], "the image job waited for the whole reply"
    snap = svc.arbiter.snapshot()
    assert snap["kinds"]["llm"]["yields"] >= 1 and snap["kinds"]["image"]["turns"] == IMAGE_STEPS
    metrics = svc.metrics.render().decode()
    assert 'bridge_npu_wait_seconds_count{kind="image"} 8.0' in metrics
    assert 'bridge_npu_yields_total{kind="llm"}' in metrics


def test_concurrent_opt_in_lets_both_through_without_waiting(sim_models_dir):
    svc, llm_log, image_log, _ = run_both(True, sim_models_dir)
    assert len(image_log) == IMAGE_STEPS and svc.arbiter.snapshot()["kinds"]["llm"]["yields"] == 0


def test_a_waiting_session_is_served_in_arrival_order():
    arbiter = NpuArbiter()
    order: list = []
    held = arbiter.acquire("image")
    threads = []
    for i in range(3):
        t = threading.Thread(target=lambda i=i: (order.append(i), arbiter.release(arbiter.acquire(f"k{i}"))))
        t.start()
        wait_for(lambda i=i: arbiter.snapshot()["waiting"] == i + 1, what=f"waiter {i} queued")
        threads.append(t)
    arbiter.release(held)
    for t in threads:
        t.join(timeout=5)
    served = [k for k in arbiter.snapshot()["kinds"] if k.startswith("k")]
    assert served == ["k0", "k1", "k2"] and order == [0, 1, 2]


def test_same_kind_shares_the_npu_and_other_kinds_queue_in_order():
    arbiter = NpuArbiter()
    a = arbiter.acquire("llm")
    b = arbiter.acquire("llm")  # a second LLM handle generates alongside (no wait)
    granted: list = []
    tickets: dict = {}
    image = threading.Thread(target=lambda: (tickets.__setitem__("image", arbiter.acquire("image")),
                                             granted.append("image")))
    image.start()
    wait_for(lambda: arbiter.contended("llm"), what="image job queued")
    late_llm = threading.Thread(target=lambda: (tickets.__setitem__("llm", arbiter.acquire("llm")),
                                                granted.append("llm")))
    late_llm.start()
    wait_for(lambda: arbiter.snapshot()["waiting"] == 2, what="late LLM queued behind the image job")
    arbiter.release(a)
    assert granted == []
    arbiter.release(b)
    image.join(timeout=5)
    assert granted == ["image"] and arbiter.snapshot()["busy"] == ["image"]
    arbiter.release(tickets["image"])
    late_llm.join(timeout=5)
    assert granted == ["image", "llm"]
