"""Fixtures of the red-team suite: the image service as a real process, SR work that holds the NPU."""

from __future__ import annotations

import shutil
import sys

import pytest

from image_engine.config import DEFAULT_SR_MODEL

from ..support import ServerProcess, bridge_argv


@pytest.fixture
def start_image_service():
    started = []

    def start(*extra: str, env=None) -> ServerProcess:
        server = ServerProcess([sys.executable, "-m", "image_engine", "serve", *extra], env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def plain_bridge(sim_models_dir):
    """One sim bridge with the default settings, shared by the red-team tests that need nothing else."""
    with ServerProcess(bridge_argv(sim_models_dir, "sim", "--sim-profile", "instant", "--no-restore")) as server:
        yield server


@pytest.fixture(scope="session")
def npu_sr_env(tmp_path_factory) -> dict:
    """SR on an .rknn model (the fake RKNNLite runs its sibling .onnx): image work that takes NPU turns."""
    d = tmp_path_factory.mktemp("npu-sr")
    shutil.copy(DEFAULT_SR_MODEL, d / "sr.onnx")
    (d / "sr.rknn").write_bytes(b"RKNN placeholder: the fake runtime reads sr.onnx")
    return {"IMAGE_ENGINE_FAKE_RKNN": "1", "RKLLAMA_BRIDGE_SR_MODEL_PATH": str(d / "sr.rknn")}


def png(width: int, height: int) -> bytes:
    """A noisy RGB PNG (noise keeps the encoder from making it tiny; the SR work is per pixel anyway)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def upscale_in_threads(url: str, data: bytes, n: int) -> tuple:
    """``n`` concurrent POSTs of ``data`` to the SR route ``url``; (threads, status codes as they end)."""
    import threading

    import requests

    codes: list = []

    def upscale():
        codes.append(requests.post(url, files={"file": ("a.png", data, "image/png")}, timeout=600).status_code)

    threads = [threading.Thread(target=upscale) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, codes
