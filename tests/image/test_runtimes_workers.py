"""Runtimes and the worker pool, exercised directly. The fake RKNNLite serves only the core-mask pinning and
multi-core tests; the RKNN path itself runs on Rockchip's simulator in tests/rknn_sim."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from image_engine.errors import Cancelled, JobTimeout, QueueFull, RuntimeFailure
from image_engine.fake_rknn import FakeRKNNLite
from image_engine.runtimes import CORE_0, CORE_1, CORE_2, core_mask_for, load_runtime
from image_engine.workers import WorkerPool
from tests.support import wait_for


def test_core_masks_follow_worker_index():
    assert [core_mask_for(i) for i in range(5)] == [CORE_0, CORE_1, CORE_2, CORE_0, CORE_1] == [1, 2, 4, 1, 2]
    assert core_mask_for(None) == 0


def test_each_worker_builds_its_runtime_in_its_own_thread_on_its_core(rknn_model):
    FakeRKNNLite.clear_calls()
    built = {}

    def make_state(i):
        built[i] = threading.current_thread().name
        return load_runtime(rknn_model, rknn_lite_cls=FakeRKNNLite, core_index=i)

    pool = WorkerPool(3, make_state, queue_max=8, close_state=lambda rt: rt.close(), name="t")
    try:
        def job(rt, token):
            rt.run({"input": np.zeros((1, 1, 8, 8), np.float32)})
            return threading.current_thread().name, rt.core_mask

        results = [pool.submit(job, timeout=30) for _ in range(12)]
    finally:
        pool.close()
    assert built == {0: "t-0", 1: "t-1", 2: "t-2"}
    assert set(results) <= {("t-0", 1), ("t-1", 2), ("t-2", 4)}
    calls = FakeRKNNLite.calls()
    assert len(calls) == 12 and all(c.end >= c.start for c in calls)
    assert {(c.thread, c.core_mask) for c in calls} <= {("t-0", 1), ("t-1", 2), ("t-2", 4)}


def test_bad_model_fails_at_load_and_pool_start():
    with pytest.raises(RuntimeFailure, match="not found"):
        load_runtime("/nonexistent/model.onnx")

    def make_state(i):
        raise RuntimeFailure(f"worker {i} cannot load")

    with pytest.raises(RuntimeFailure, match="cannot load"):
        WorkerPool(2, make_state, queue_max=1)


def test_garbage_onnx_file_is_a_runtime_failure(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(RuntimeFailure, match="cannot load ONNX model"):
        load_runtime(bad)


class _Gate:
    """A job that runs until released or cancelled, reporting when it has started."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran = 0

    def __call__(self, state, token):
        self.ran += 1
        self.started.set()
        while not self.release.wait(0.005):
            token.raise_if_cancelled()
        return "done"


def test_timeout_cancels_the_running_job_and_drops_the_queued_one():
    pool = WorkerPool(1, lambda i: None, queue_max=4)
    running, queued = _Gate(), _Gate()
    errors = []
    try:
        t = threading.Thread(target=lambda: errors.append(_raises(pool.submit, queued, 0.2)))
        first = threading.Thread(target=lambda: errors.append(_raises(pool.submit, running, 0.3)))
        first.start()
        assert running.started.wait(10)
        t.start()
        first.join(10)
        t.join(10)
        assert sorted(type(e).__name__ for e in errors) == ["JobTimeout", "JobTimeout"]
        wait_for(lambda: pool.stats()["active"] == 0 and pool.stats()["cancelled"] == 1
                 and pool.stats()["dropped"] == 1, what="cancellation to settle")
        assert queued.ran == 0, "a job whose caller gave up must not start"
        assert pool.submit(lambda s, tok: 42, timeout=10) == 42, "the worker is free again"
    finally:
        running.release.set()
        pool.close()


def test_full_queue_is_rejected_at_once():
    pool = WorkerPool(1, lambda i: None, queue_max=1)
    running, queued = _Gate(), _Gate()
    results = []
    try:
        a = threading.Thread(target=lambda: results.append(pool.submit(running, timeout=30)))
        a.start()
        assert running.started.wait(10)
        b = threading.Thread(target=lambda: results.append(pool.submit(queued, timeout=30)))
        b.start()
        wait_for(lambda: pool.stats()["queued"] == 1, what="second job queued")
        with pytest.raises(QueueFull, match="queue"):
            pool.submit(lambda s, tok: 1, timeout=30)
        running.release.set()
        queued.release.set()
        a.join(10)
        b.join(10)
        assert results == ["done", "done"] and pool.stats()["rejected"] == 1
    finally:
        running.release.set()
        queued.release.set()
        pool.close()


def test_close_cancels_running_jobs():
    pool = WorkerPool(1, lambda i: None, queue_max=1)
    gate, errors = _Gate(), []
    t = threading.Thread(target=lambda: errors.append(_raises(pool.submit, gate, None)))
    t.start()
    assert gate.started.wait(10)
    pool.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    pool.close()  # idempotent


def _raises(fn, *args):
    try:
        fn(*args)
    except (JobTimeout, Cancelled, QueueFull) as exc:
        return exc
    return None
