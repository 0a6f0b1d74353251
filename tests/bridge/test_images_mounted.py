"""The bridge mounts the image engine's routes under /image: one process owns the NPU for both."""

import io

import requests
from PIL import Image


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_superres_is_served_by_the_bridge(start_bridge):
    b = start_bridge("--sim-profile", "instant")
    r = requests.post(b.url + "/image/superres", files={"file": ("in.png", _png(20, 12), "image/png")},
                      data={"out_format": "png"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["X-SuperRes"] == "1" and r.headers["X-SR-Scale"] == "3"
    assert Image.open(io.BytesIO(r.content)).size == (60, 36)
    # rkllama's own /generate is untouched by the mount
    assert requests.post(b.url + "/generate", json={}, timeout=10).json()["error"]["code"] == "invalid_messages"


def test_image_errors_are_json_and_the_token_covers_image_routes(start_bridge):
    b = start_bridge("--sim-profile", "instant", token="tok")
    r = requests.post(b.url + "/image/superres", files={"file": ("x.png", b"not an image", "image/png")},
                      timeout=30)
    assert r.status_code == 401
    r = requests.post(b.url + "/image/superres", files={"file": ("x.png", b"not an image", "image/png")},
                      headers={"Authorization": "Bearer tok"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_no_images_leaves_the_image_routes_out(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--no-images")
    assert requests.post(b.url + "/image/superres", files={"file": ("in.png", _png(4, 4), "image/png")},
                         timeout=30).status_code == 404


def npu_sr_env(tmp_path) -> dict:
    """The bridge's SR on an .rknn model (the fake RKNNLite runs its sibling .onnx): work on the NPU."""
    import shutil

    from image_engine.config import DEFAULT_SR_MODEL

    shutil.copy(DEFAULT_SR_MODEL, tmp_path / "sr.onnx")
    (tmp_path / "sr.rknn").write_bytes(b"RKNN placeholder: the fake runtime reads sr.onnx")
    return {"IMAGE_ENGINE_FAKE_RKNN": "1", "RKLLAMA_BRIDGE_SR_MODEL_PATH": str(tmp_path / "sr.rknn")}


def test_image_work_on_the_npu_takes_turns_with_a_running_llm_stream(start_bridge, tmp_path):
    """The mounted image routes go through the bridge's NPU arbiter: an SR job on the NPU arriving
    mid-stream waits for a token boundary (the LLM yields to it), runs, and the stream then finishes intact."""
    import json
    import threading

    from rkllama_bridge.runtimes.sim import DEFAULT_REPLY

    from ..conftest import SIM_MODEL
    from ..support import wait_for

    b = start_bridge("--sim-profile", "instant", "--sim-decode-tok-s", "20", env=npu_sr_env(tmp_path))
    lines: list = []

    def stream():
        with requests.post(b.url + "/v1/generate", json={"model": SIM_MODEL, "messages": [
                {"role": "user", "content": "hi"}]}, stream=True, timeout=60) as r:
            lines.extend(json.loads(x) for x in r.iter_lines() if x)

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: b.get_json("/health")[1]["npu"]["busy"] == ["llm"], what="LLM holding the NPU")
    r = requests.post(b.url + "/image/superres", files={"file": ("in.png", _png(16, 16), "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    t.join(60)
    npu = b.get_json("/health")[1]["npu"]["kinds"]
    assert npu["image"]["turns"] >= 1 and npu["llm"]["yields"] >= 1
    assert "".join(x.get("text", "") for x in lines[:-1]) == DEFAULT_REPLY and lines[-1]["finish_reason"] == "stop"


def test_sr_on_the_cpu_takes_no_npu_turns(start_bridge):
    """The embedded SR model runs on onnxruntime (the CPU): it never waits for, nor holds, the NPU."""
    b = start_bridge("--sim-profile", "instant")
    r = requests.post(b.url + "/image/superres", files={"file": ("in.png", _png(16, 16), "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    assert "image" not in b.get_json("/health")[1]["npu"]["kinds"]
