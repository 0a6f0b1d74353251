"""The text-to-image HTTP service as a real `image-engine serve` subprocess, driven by real HTTP clients."""

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import requests
from PIL import Image

from image_engine.tiny_model import write_tiny_model
from tests.support import ServerProcess, wait_for

SLOW_STEPS = 50


def serve_argv():
    return [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1"]


def write_modes(path, fast, slow, fast_steps=4, extra="", small=None):
    path.write_text(f"""
default_mode: sd15-fast
modes:
  sd15-fast:
    model: {fast}
    default_size: "512x512"
    default_steps: {fast_steps}
    default_guidance: 1.0
  sdxl-portrait:
    model: {slow}
    default_size: "512x512"
    default_steps: {SLOW_STEPS}
    default_guidance: 8.0
    superres: true
    superres_magnitude: 1
  tiny64:
    model: {small or fast.parent / "small"}
    default_size: "64x64"
{extra}""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcm-models")
    fast = write_tiny_model(root / "fast", 512, 512, seed=3)
    slow = write_tiny_model(root / "slow", 512, 512, seed=4, unet_layers=20)
    write_tiny_model(root / "small", 64, 64, seed=5)
    return root, fast, slow


@pytest.fixture(scope="module")
def server(models):
    root, fast, slow = models
    modes = root / "modes.yaml"
    write_modes(modes, fast, slow)
    env = {"MODES_PATH": str(modes), "NUM_WORKERS": "1", "QUEUE_MAX": "1", "MODES_WATCH_INTERVAL": "0.05",
           "OUTPUTS_DIR": str(root / "outputs"), "SR_NUM_WORKERS": "1"}
    with ServerProcess(serve_argv(), env=env) as srv:
        srv.modes_file, srv.fast, srv.slow, srv.outputs = modes, fast, slow, root / "outputs"
        yield srv


def post(srv, path, body, **kw):
    return requests.post(srv.url + path, json=body, timeout=60, **kw)


def png_size(data):
    return Image.open(io.BytesIO(data)).size


def status(srv):
    return requests.get(srv.url + "/api/models/status", timeout=10).json()


class Stream:
    """A streaming generation over a raw HTTP connection, so the test can hang up mid-way."""

    def __init__(self, srv, body):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        self.conn.request("POST", "/generate/stream", json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()

    def next(self):
        return json.loads(self.resp.readline())

    def rest(self):
        return [json.loads(line) for line in self.resp.read().splitlines()]

    def hang_up(self):
        self.resp.close()
        self.conn.close()


SEED_LCM_CURL = """curl -X POST http://localhost:4200/generate \\
  -H "Content-Type: application/json" \\
  -o output.png \\
  -d '{
    "prompt": "a cinematic forest at sunrise",
    "size": "512x512",
    "num_inference_steps": 4,
    "guidance_scale": 1.0,
    "seed": 1234
  }'"""


def test_seed_curl_example_runs_verbatim(server, tmp_path):
    cmd = SEED_LCM_CURL.replace("http://localhost:4200", server.url)
    subprocess.run(["bash", "-c", cmd], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    data = (tmp_path / "output.png").read_bytes()
    assert png_size(data) == (512, 512)
    again = post(server, "/generate", {"prompt": "a cinematic forest at sunrise", "size": "512x512",
                                       "num_inference_steps": 4, "guidance_scale": 1.0, "seed": 1234})
    assert again.content == data  # same seed, same bytes, whichever client asked


def test_generate_headers_and_seed_determinism(server):
    body = {"prompt": "a city at sunset", "seed": 99}
    a, b = post(server, "/generate", body), post(server, "/generate", body)
    c = post(server, "/generate", {**body, "seed": 100})
    assert a.status_code == 200 and a.headers["Content-Type"] == "image/png"
    assert a.headers["X-Seed"] == "99" and a.headers["X-Mode"] == "sd15-fast"
    assert a.headers["X-SuperRes"] == "0"
    assert a.content == b.content != c.content
    unseeded = post(server, "/generate", {"prompt": "a city at sunset"})
    assert 0 <= int(unseeded.headers["X-Seed"]) < 2 ** 32


def test_generate_answers_base64_json_when_asked(server):
    png = post(server, "/generate", {"prompt": "a cat", "seed": 5}).content
    for kw in ({"json": {"prompt": "a cat", "seed": 5, "response_format": "b64_json"}},
               {"json": {"prompt": "a cat", "seed": 5}, "headers": {"Accept": "application/json"}}):
        r = requests.post(server.url + "/generate", timeout=60, **kw)
        assert r.headers["Content-Type"] == "application/json"
        assert base64.b64decode(r.json()["image"]) == png and r.json()["seed"] == 5


def test_seed_superres_body_upscales_with_sr_headers(server):
    body = {"prompt": "a cinematic photograph of a futuristic city at sunset", "size": "512x512",
            "num_inference_steps": 4, "guidance_scale": 1.0, "seed": 12345678, "superres": True,
            "superres_format": "jpeg", "superres_quality": 92}
    r = post(server, "/generate", body)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["X-SuperRes"] == "1" and r.headers["X-SR-Scale"] == "3"
    assert r.headers["X-SR-Passes"] == "1"
    assert r.headers["X-SR-Model"].endswith((".onnx", ".rknn"))
    assert Image.open(io.BytesIO(r.content)).size == (1536, 1536)
    two = post(server, "/generate", {"prompt": "x", "seed": 1, "superres": True, "superres_magnitude": 2,
                                     "superres_format": "png", "mode": "tiny64"})
    assert two.headers["X-SR-Passes"] == "2" and two.headers["X-SR-Scale"] == "9"
    assert png_size(two.content) == (576, 576)
    post(server, "/api/modes/switch", {"mode": "sd15-fast"})


def test_custom_sd_inference_answers_base64_and_persists(server):
    body = {"uid": "<your-uid>", "prompt": "A futuristic cityscape at sunset", "steps": 50, "seed": 42,
            "strength": 0.9, "do_scale": True, "scale": 8.0}
    r = post(server, "/inference", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["message"] == "success" and out["uid"] == "<your-uid>"
    image = base64.b64decode(out["image"])
    assert png_size(image) == (512, 512)
    assert (server.outputs / out["file"]).read_bytes() == image
    fresh = post(server, "/inference", {"prompt": "a dog", "seed": 1}).json()
    assert len(fresh["uid"]) == 8 and (server.outputs / fresh["file"]).is_file()


def test_openai_images_shape(server):
    r = post(server, "/v1/images/generations", {"prompt": "a mountain", "size": "512x512", "seed": 7})
    out = r.json()
    assert r.status_code == 200 and isinstance(out["created"], int)
    assert png_size(base64.b64decode(out["data"][0]["b64_json"])) == (512, 512)
    url = post(server, "/v1/images/generations",
               {"prompt": "a mountain", "seed": 7, "response_format": "url"})
    assert url.json()["data"][0]["url"] == "data:image/png;base64," + out["data"][0]["b64_json"]


def test_stream_reports_every_step_then_the_image(server):
    s = Stream(server, {"prompt": "a forest", "seed": 11, "num_inference_steps": 3})
    assert s.resp.status == 200 and s.resp.getheader("Content-Type") == "application/x-ndjson"
    lines = [s.next()] + s.rest()
    assert lines[0] == {"type": "start", "mode": "sd15-fast", "seed": 11, "width": 512, "height": 512,
                        "total_steps": 3}
    assert [(x["step"], x["total_steps"]) for x in lines[1:4]] == [(1, 3), (2, 3), (3, 3)]
    done = lines[4]
    assert done["type"] == "done" and len(lines) == 5
    same = post(server, "/generate", {"prompt": "a forest", "seed": 11, "num_inference_steps": 3})
    assert base64.b64decode(done["image"]) == same.content


BAD = [
    ("/generate", b"not json", "bad_input"),
    ("/generate", [1, 2], "bad_input"),
    ("/generate", {"size": "512x512"}, "bad_input"),
    ("/generate", {"prompt": 7}, "bad_input"),
    ("/generate", {"prompt": "x", "size": "512"}, "bad_input"),
    ("/generate", {"prompt": "x", "size": 512}, "bad_input"),
    ("/generate", {"prompt": "x", "size": "0x512"}, "bad_input"),
    ("/generate", {"prompt": "x", "size": "64x64"}, "bad_input"),
    ("/generate", {"prompt": "x", "size": "520x512"}, "bad_input"),
    ("/generate", {"prompt": "x", "num_inference_steps": 0}, "bad_input"),
    ("/generate", {"prompt": "x", "num_inference_steps": 51}, "bad_input"),
    ("/generate", {"prompt": "x", "num_inference_steps": "4"}, "bad_input"),
    ("/generate", {"prompt": "x", "num_inference_steps": 4.5}, "bad_input"),
    ("/generate", {"prompt": "x", "num_inference_steps": True}, "bad_input"),
    ("/generate", {"prompt": "x", "guidance_scale": "1.0"}, "bad_input"),
    ("/generate", {"prompt": "x", "guidance_scale": -1}, "bad_input"),
    ("/generate", {"prompt": "x", "guidance_scale": 1000}, "bad_input"),
    ("/generate", {"prompt": "x", "seed": -1}, "bad_input"),
    ("/generate", {"prompt": "x", "seed": 2 ** 32}, "bad_input"),
    ("/generate", {"prompt": "x", "seed": "42"}, "bad_input"),
    ("/generate", {"prompt": "x", "superres": "yes"}, "bad_input"),
    ("/generate", {"prompt": "x", "superres": True, "superres_magnitude": 4}, "bad_input"),
    ("/generate", {"prompt": "x", "superres": True, "superres_format": "gif"}, "bad_input"),
    ("/generate", {"prompt": "x", "superres": True, "superres_quality": 0}, "bad_input"),
    ("/generate", {"prompt": "x", "mode": "no-such-mode"}, "bad_input"),
    ("/generate", {"prompt": "x", "colour": "blue"}, "bad_input"),
    ("/generate", {"prompt": "x" * 5000}, "bad_input"),
    ("/generate/stream", {"prompt": "x", "size": "64x64"}, "bad_input"),
    ("/inference", {"prompt": "x", "steps": "50"}, "bad_input"),
    ("/inference", {"prompt": "x", "uid": 12}, "bad_input"),
    ("/v1/images/generations", {"prompt": "x", "n": 2}, "bad_input"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "xml"}, "bad_input"),
    ("/api/modes/switch", {"mode": 3}, "bad_input"),
    ("/api/modes/switch", {"mode": "no-such-mode"}, "bad_input"),
]


def _case_id(path, body):
    return f"{path}:{body if isinstance(body, bytes) else json.dumps(body)[:40]}"


@pytest.mark.parametrize("path,body,code", BAD, ids=[_case_id(p, b) for p, b, _ in BAD])
def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(server, path, body, code):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_hanging_up_a_stream_cancels_the_job_and_frees_the_worker(server):
    before = status(server)
    s = Stream(server, {"prompt": "slow", "mode": "sdxl-portrait", "seed": 1, "superres": False})
    try:
        assert s.next()["type"] == "start"
        assert s.next()["step"] == 1
    finally:
        s.hang_up()
    after = wait_for(lambda: (st := status(server))["counters"]["cancelled"] > before["counters"]["cancelled"]
                     and st, timeout=30, what="the hung-up job to be cancelled")
    assert after["counters"]["steps"] - before["counters"]["steps"] < SLOW_STEPS
    assert after["queue"]["active"] == 0
    post(server, "/api/modes/switch", {"mode": "sd15-fast"})
    r = post(server, "/generate", {"prompt": "next", "seed": 2})
    assert r.status_code == 200 and r.headers["X-Mode"] == "sd15-fast"


def test_full_queue_answers_429_and_queued_jobs_still_finish(server):
    running = Stream(server, {"prompt": "slow", "mode": "sdxl-portrait", "seed": 3, "superres": False})
    queued = {}
    try:
        assert running.next()["type"] == "start"  # the only worker is busy
        body = {"prompt": "queued", "mode": "sd15-fast", "seed": 4}
        t = threading.Thread(target=lambda: queued.update(r=post(server, "/generate", body)))
        t.start()
        wait_for(lambda: status(server)["queue"]["queued"] == 1, timeout=30, what="one queued job")
        r = post(server, "/generate", {"prompt": "one too many", "seed": 5})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    finally:
        running.hang_up()
    t.join(60)
    assert queued["r"].status_code == 200 and queued["r"].headers["X-Mode"] == "sd15-fast"


def test_mode_switch_api_and_status(server):
    modes = requests.get(server.url + "/api/modes", timeout=10).json()
    assert set(modes["modes"]) >= {"sd15-fast", "sdxl-portrait"}
    assert modes["modes"]["sdxl-portrait"]["default_steps"] == SLOW_STEPS
    r = post(server, "/api/modes/switch", {"mode": "sdxl-portrait"})
    assert r.json()["mode"] == "sdxl-portrait"
    assert status(server)["current_mode"] == "sdxl-portrait"
    post(server, "/api/modes/switch", {"mode": "sd15-fast"})
    vram = requests.get(server.url + "/api/vram", timeout=10).json()
    assert vram["process"]["rss_bytes"] > 0 and "npu" in vram and vram["models"][0]["loaded"]


def test_modes_file_edit_reloads_while_a_job_is_in_flight(server):
    s = Stream(server, {"prompt": "slow", "mode": "sdxl-portrait", "seed": 8, "num_inference_steps": 20,
                        "superres": False})
    try:
        assert s.next()["type"] == "start"
        write_modes(server.modes_file, server.fast, server.slow, fast_steps=2,
                    extra=f"  sd15-copy:\n    model: {server.fast}\n")
        wait_for(lambda: "sd15-copy" in requests.get(server.url + "/api/modes", timeout=10).json()["modes"],
                 timeout=30, what="the edited modes file to be picked up")
        lines = s.rest()
    finally:
        s.hang_up()
    assert lines[-1]["type"] == "done" and lines[-1]["total_steps"] == 20  # the in-flight job kept its mode
    r = post(server, "/generate", {"prompt": "after reload", "mode": "sd15-fast", "seed": 1})
    assert r.status_code == 200 and r.headers["X-Steps"] == "2"

    server.modes_file.write_text("modes: [this is: not valid")
    bad = requests.post(server.url + "/api/modes/reload", timeout=10)
    assert bad.status_code == 422 and "YAML" in bad.json()["error"]["message"]
    kept = requests.get(server.url + "/api/modes", timeout=10).json()
    assert "sd15-copy" in kept["modes"] and kept["last_reload_error"]
    assert post(server, "/generate", {"prompt": "still serving", "seed": 1}).status_code == 200

    server.modes_file.write_text(f"modes:\n  lonely:\n    model: {server.fast}/does-not-exist\n")
    bad = requests.post(server.url + "/api/modes/reload", timeout=10)
    assert bad.status_code == 422 and "does not exist" in bad.json()["error"]["message"]
    write_modes(server.modes_file, server.fast, server.slow)
    ok = requests.post(server.url + "/api/modes/reload", timeout=10).json()
    assert "sd15-copy" not in ok["modes"] and ok["current_mode"] == "sd15-fast"


@pytest.fixture(scope="module")
def short_timeout_server(tmp_path_factory):
    """onnxruntime with a 1.5 s job timeout; the modes file reloads on SIGHUP only. (RKNN generation is tested
    on Rockchip's simulator in tests/rknn_sim.)"""
    root = tmp_path_factory.mktemp("lcm-timeout")
    fast = write_tiny_model(root / "fast", 512, 512, seed=3)
    slow = write_tiny_model(root / "slow", 512, 512, seed=4, unet_layers=64)
    write_tiny_model(root / "small", 64, 64, seed=5)
    modes = root / "modes.yaml"
    write_modes(modes, fast, slow)
    env = {"MODES_PATH": str(modes), "NUM_WORKERS": "1", "DEFAULT_TIMEOUT": "1.5", "MODES_WATCH_INTERVAL": "0",
           "LCM_BACKEND": "auto"}
    with ServerProcess(serve_argv(), env=env) as srv:
        srv.modes_file, srv.fast, srv.slow = modes, fast, slow
        yield srv


def test_timeout_cancels_the_job_and_the_worker_serves_the_next_request(short_timeout_server):
    before = status(short_timeout_server)
    r = post(short_timeout_server, "/generate", {"prompt": "slow", "mode": "sdxl-portrait", "superres": False})
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    after = wait_for(lambda: (st := status(short_timeout_server))["queue"]["active"] == 0 and st, timeout=30,
                     what="the timed-out job to stop")
    assert after["queue"]["timed_out"] == before["queue"]["timed_out"] + 1
    assert after["counters"]["steps"] - before["counters"]["steps"] < SLOW_STEPS
    ok = post(short_timeout_server, "/generate", {"prompt": "quick", "mode": "sd15-fast", "seed": 1})
    assert ok.status_code == 200


def test_sighup_reloads_the_modes_file(short_timeout_server):
    write_modes(short_timeout_server.modes_file, short_timeout_server.fast, short_timeout_server.slow,
                extra=f"  by-signal:\n    model: {short_timeout_server.fast}\n")
    assert "by-signal" not in requests.get(short_timeout_server.url + "/api/modes", timeout=10).json()["modes"]
    short_timeout_server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "by-signal" in requests.get(short_timeout_server.url + "/api/modes", timeout=10).json()["modes"],
             timeout=30, what="SIGHUP to reload the modes")
    assert post(short_timeout_server, "/generate", {"prompt": "x", "mode": "by-signal", "seed": 1}).status_code == 200


@pytest.mark.parametrize("env,message", [
    ({"MODEL_ROOT": "/nonexistent/lcm"}, "does not exist"),
    ({"MODES_PATH": "__BAD_MODES__"}, "not valid YAML"),
    ({"MODEL_ROOT": "/tmp", "DEFAULT_SIZE": "big"}, "DEFAULT_SIZE"),
])
def test_bad_configuration_fails_fast_with_a_reason(tmp_path, env, message):
    if env.get("MODES_PATH") == "__BAD_MODES__":
        bad = tmp_path / "modes.yaml"
        bad.write_text("modes: [unclosed")
        env = {**env, "MODES_PATH": str(bad)}
    proc = subprocess.run(serve_argv() + ["--port", "0"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr
