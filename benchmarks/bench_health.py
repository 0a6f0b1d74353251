"""``/health`` latency of a bridge with --threads 4, idle vs while six super-resolution requests run, side
by side in one run; and how far past --request-timeout a reply ends when it waits for NPU image work."""

from __future__ import annotations

import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from image_engine.config import DEFAULT_SR_MODEL
from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes.sim import write_sim_model

from .common import median, percentile, start_server, table

MODEL = "bench-sim"
PROBES = 20


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def _probe_ms(url: str) -> float:
    started = time.perf_counter()
    requests.get(url + "/health", timeout=120).raise_for_status()
    return (time.perf_counter() - started) * 1000


def _sr_jobs(url: str, n: int) -> list:
    data = _png(480)
    jobs = [threading.Thread(target=lambda: requests.post(url + "/image/superres", files={
        "file": ("a.png", data, "image/png")}, timeout=600)) for _ in range(n)]
    for t in jobs:
        t.start()
    return jobs


def _health_rows(url: str) -> list:
    idle = [_probe_ms(url) for _ in range(PROBES)]
    jobs = _sr_jobs(url, 6)
    busy = []
    while len(busy) < PROBES and any(t.is_alive() for t in jobs):
        if requests.get(url + "/health", timeout=120).json()["threads"]["sr"]["in_flight"]:
            busy.append(_probe_ms(url))
    for t in jobs:
        t.join(600)
    return [["idle", len(idle), round(median(idle), 1), round(percentile(idle, 0.95), 1), round(max(idle), 1)],
            ["six SR requests in flight", len(busy), round(median(busy), 1), round(percentile(busy, 0.95), 1),
             round(max(busy), 1)]]


def _overshoot_s(url: str, hold: Path) -> float:
    """One image call holds the NPU (the fake RKNNLite waits while ``hold`` exists); an LLM request with
    --request-timeout 1 arrives behind it. Returns how long past its deadline the reply ended."""
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 40}
    requests.post(url + "/v1/generate", json={**ask, "max_new_tokens": 1}, timeout=60)  # warm
    hold.touch()
    job = threading.Thread(target=lambda: requests.post(url + "/image/superres", files={
        "file": ("a.png", _png(64), "image/png")}, timeout=600))
    job.start()
    try:
        while requests.get(url + "/health", timeout=60).json()["npu"]["busy"] != ["image"]:
            time.sleep(0.01)
        started = time.perf_counter()
        r = requests.post(url + "/v1/generate", json=ask, timeout=120)
        took = time.perf_counter() - started
        assert json.loads(r.text.splitlines()[-1])["finish_reason"] == "timeout"
    finally:
        hold.unlink()
        job.join(600)
    return took - 1.0


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sim_model(tmp / "models", MODEL, ensure_default_model())
        base = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(tmp / "models"), "--runtime", "sim",
                "--sim-profile", "instant", "--no-restore", "--log-level", "WARNING"]
        proc, url = start_server([*base, "--threads", "4"], tmp, "bridge-threads")
        try:
            rows = _health_rows(url)
        finally:
            proc.terminate()
            proc.wait(30)
        (tmp / "sr.onnx").write_bytes(DEFAULT_SR_MODEL.read_bytes())
        (tmp / "sr.rknn").write_bytes(b"RKNN placeholder: the fake runtime reads sr.onnx")
        env = {"IMAGE_ENGINE_FAKE_RKNN": "1", "RKLLAMA_BRIDGE_SR_MODEL_PATH": str(tmp / "sr.rknn"),
               "IMAGE_ENGINE_FAKE_RKNN_HOLD": str(tmp / "npu-busy")}
        proc, url = start_server([*base, "--request-timeout", "1"], tmp, "bridge-deadline", env=env)
        try:
            overshoot = [_overshoot_s(url, tmp / "npu-busy") for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(30)
    return ("### /health under image load (bridge --threads 4)\n\n" +
            table(["case", "probes", "median ms", "p95 ms", "max ms"], rows) +
            f"\n\n--request-timeout 1 while one image call holds the NPU (fake RKNNLite SR): the reply ends "
            f"{median(overshoot) * 1000:.0f} ms past the deadline (median of 3; max {max(overshoot) * 1000:.0f} ms).\n")


if __name__ == "__main__":
    print(run())
