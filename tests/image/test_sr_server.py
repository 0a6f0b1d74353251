"""``image-engine serve`` as a real subprocess: /superres behaviour, limits, errors, RKNN path, CLI."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from requests.structures import CaseInsensitiveDict

from image_engine.sr import TileGeometry, Upscaler
from image_engine.sr_io import to_uint8
from tests.support import REPO, ServerProcess, wait_for

from .imgutil import engine_argv, make_image, png_header_only, post_image, to_png


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def error_of(status_headers_body) -> tuple[int, str, str]:
    status, headers, body = status_headers_body
    headers = CaseInsensitiveDict(headers)
    assert headers.get("Content-Type", "").startswith("application/json"), body[:200]
    err = json.loads(body)["error"]
    return status, err["code"], err["message"]


def test_png_upscale_matches_the_library_and_sends_the_headers(sr_server, ort_runtime):
    img = make_image(90, 130, seed=11)
    data = to_png(img)
    status, headers, body = post_image(sr_server, data)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/png"
    assert (headers["X-SuperRes"], headers["X-SR-Model"], headers["X-SR-Scale"], headers["X-SR-Passes"],
            headers["X-SR-Format"]) == ("1", "espcn_x3.onnx", "3", "1", "png")
    got = decode(body)
    sent = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
    want = to_uint8(Upscaler(ort_runtime, TileGeometry(tile=224)).upscale(sent))
    assert got.shape == (270, 390, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_magnitude_two_is_encoded_once(sr_server, ort_runtime):
    img = make_image(30, 40, seed=12)
    status, headers, body = post_image(sr_server, to_png(img), fields={"magnitude": "2"})
    assert status == 200, body[:300]
    assert (headers["X-SR-Scale"], headers["X-SR-Passes"]) == ("9", "2")
    got = decode(body).astype(int)
    sent = np.asarray(Image.open(io.BytesIO(to_png(img))), dtype=np.float32) / 255.0
    up = Upscaler(ort_runtime, TileGeometry(tile=224))
    float_path = to_uint8(up.upscale(sent, passes=2)).astype(int)
    requantised = to_uint8(up.upscale(to_uint8(up.upscale(sent)).astype(np.float32) / 255)).astype(int)
    assert got.shape == (270, 360, 3)
    assert np.abs(got - float_path).max() <= 1
    assert np.abs(got - requantised).max() > 1, "the answer must not be the 8-bit re-encoded variant"


@pytest.mark.parametrize("shape,channels", [((1, 1), 3), ((17, 300), 4), ((224, 224), 3), ((101, 3), 4)])
def test_any_size_and_rgba_through_http(sr_server, shape, channels):
    img = make_image(*shape, channels=channels, seed=13)
    status, headers, body = post_image(sr_server, to_png(img), query="?out_format=png")
    assert status == 200, body[:300]
    out = Image.open(io.BytesIO(body))
    assert out.size == (shape[1] * 3, shape[0] * 3)
    assert out.mode == ("RGBA" if channels == 4 else "RGB")


def test_params_as_form_fields_and_webp(sr_server):
    status, headers, body = post_image(sr_server, to_png(make_image(20, 20)),
                                       fields={"out_format": "webp", "quality": "80"})
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(body)).format == "WEBP"


def test_raw_body_upload(sr_server):
    status, headers, body = sr_server.request("POST", "/superres?out_format=jpeg", to_png(make_image(10, 12)),
                                              headers={"Content-Type": "image/png"})
    headers = CaseInsensitiveDict(headers)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (36, 30)


@pytest.mark.parametrize("data,query,fields,status,code", [
    (b"", "", {}, 400, "bad_input"),
    (b"just some text, no pixels", "", {}, 400, "bad_input"),
    ("truncated", "", {}, 400, "bad_input"),
    (png_header_only(30000, 30000), "", {}, 413, "too_large"),   # Pillow's decompression-bomb guard
    (png_header_only(1200, 1000), "", {}, 413, "too_large"),     # our limit, checked before decoding
    ("ok", "", {"magnitude": "2"}, 413, "too_large"),             # 400x400 x9 would exceed 1 MP
    ("ok", "?magnitude=0", {}, 400, "bad_input"),
    ("ok", "?magnitude=x", {}, 400, "bad_input"),
    ("ok", "?out_format=gif", {}, 400, "bad_input"),
    ("ok", "?quality=101", {}, 400, "bad_input"),
])
def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(sr_server, data, query, fields, status, code):
    if data == "truncated":
        full = to_png(make_image(64, 64, seed=3))
        data = full[:len(full) // 2]
    elif data == "ok":
        data = to_png(make_image(400, 400))
    got_status, got_code, message = error_of(post_image(sr_server, data, query=query, fields=fields))
    assert (got_status, got_code) == (status, code), message
    if status == 413:
        assert "1000000" in message, "the message states the limit"
    assert post_image(sr_server, to_png(make_image(8, 8)))[0] == 200


def test_missing_file_field_is_a_400(sr_server):
    body = b"--b\r\nContent-Disposition: form-data; name=\"magnitude\"\r\n\r\n1\r\n--b--\r\n"
    ctype = {"Content-Type": "multipart/form-data; boundary=b"}
    status, code, message = error_of(sr_server.request("POST", "/superres", body, headers=ctype))
    assert (status, code) == (400, "bad_input") and "'file'" in message


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_seed_curl_example_runs_verbatim(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    try:  # another suite's seed example may hold the port for a moment
        wait_for(lambda: _port_is_free(4200), timeout=30, interval=0.2, what="port 4200 to be free")
    except AssertionError:
        pytest.skip("port 4200 (the seed example's port) is in use on this machine")
    (tmp_path / "input.png").write_bytes(to_png(make_image(40, 60, seed=21)))
    proc = subprocess.Popen(engine_argv(), env={**__import__("os").environ, "PORT": "4200"}, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = ServerProcess([])
        probe.port = 4200
        wait_for(lambda: proc.poll() is None and probe.get_json("/health")[0] == 200, timeout=60,
                 what="image-engine on port 4200")
        cmd = ('curl -F "file=@input.png" '
               '"http://localhost:4200/superres?out_format=jpeg&quality=92" --output out.jpg')  # the seed's
        result = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / "out.jpg") as out:
            assert (out.format, out.size) == ("JPEG", (180, 120))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """2000x2000: with 32-pixel tiles that is ~20,000 model runs, far longer than any timeout used here."""
    return to_png(make_image(2000, 2000, seed=5))


def test_full_queue_gets_429_and_timeouts_cancel_the_work(big_png):
    env = {"SR_NUM_WORKERS": "1", "SR_QUEUE_MAX": "1", "SR_REQUEST_TIMEOUT": "3", "SR_INPUT_SIZE": "32",
           "SR_OUTPUT_SIZE": "96", "SR_THREADS": "1"}
    big, small = big_png, to_png(make_image(8, 8))
    total_tiles = TileGeometry(tile=32).tile_count(2000, 2000)
    with ServerProcess(engine_argv(), env=env, startup_timeout=60) as server:
        pool = lambda: server.get_json("/health")[1]["sr"]["pool"]  # noqa: E731
        answers = {}
        first = threading.Thread(target=lambda: answers.update(big=post_image(server, big)))
        first.start()
        wait_for(lambda: pool()["active"] == 1, timeout=30, what="the big job running")
        second = threading.Thread(target=lambda: answers.update(queued=post_image(server, small)))
        second.start()
        wait_for(lambda: pool()["queued"] == 1, timeout=30, what="a second job queued")
        status, code, message = error_of(post_image(server, small))
        assert (status, code) == (429, "queue_full"), message
        first.join(60)
        second.join(60)
        assert error_of(answers["big"])[:2] == (504, "timeout")
        # The queued job either ran once the big one was cancelled, or timed out waiting.
        assert answers["queued"][0] in (200, 504)
        wait_for(lambda: pool()["active"] == 0, timeout=30, what="the cancelled job to stop")
        stats = server.get_json("/health")[1]["sr"]
        assert stats["pool"]["cancelled"] >= 1 and stats["pool"]["timed_out"] >= 1
        assert stats["tiles_run"] < total_tiles, "the timed-out job stopped early instead of running on"
        assert post_image(server, small)[0] == 200


def test_fake_rknn_server_uses_one_core_per_worker_and_matches_onnxruntime(sr_server, rknn_model):
    env = {"SR_MODEL_PATH": str(rknn_model), "IMAGE_ENGINE_FAKE_RKNN": "1", "SR_NUM_WORKERS": "3"}
    data = to_png(make_image(60, 250, channels=4, seed=17))
    with ServerProcess(engine_argv(), env=env, startup_timeout=60) as server:
        workers = server.get_json("/health")[1]["sr"]["workers"]
        assert sorted((w["index"], w["backend"], w["core_mask"]) for w in workers) == \
            [(0, "rknnlite", 1), (1, "rknnlite", 2), (2, "rknnlite", 4)]
        status, headers, body = post_image(server, data)
        assert status == 200 and headers["X-SR-Model"] == "sr.rknn"
    reference = post_image(sr_server, data)
    assert np.array_equal(decode(body), decode(reference[2]))


@pytest.mark.parametrize("setup,expect", [("missing", "not found"), ("garbage", "cannot load ONNX model"),
                                          ("bad-size", "SR_INPUT_SIZE")])
def test_bad_model_fails_fast_at_start(tmp_path, sr_model, setup, expect):
    env = {**__import__("os").environ}
    if setup == "missing":
        env["SR_MODEL_PATH"] = str(tmp_path / "super-resolution-10.rknn")
    elif setup == "garbage":
        (tmp_path / "m.onnx").write_bytes(b"\0garbage")
        env["SR_MODEL_PATH"] = str(tmp_path / "m.onnx")
    else:  # a x3 model cannot map 224-pixel tiles to 896 pixels
        env["SR_OUTPUT_SIZE"] = "896"
    result = subprocess.run(engine_argv("--port", "0"), env=env, cwd=str(REPO), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert expect in result.stderr, result.stderr[-2000:]


def test_sr_disabled_answers_503(tmp_path):
    env = {"SR_ENABLED": "0", "SR_MODEL_PATH": str(tmp_path / "absent.onnx")}
    with ServerProcess(engine_argv(), env=env, startup_timeout=60) as server:
        assert server.get_json("/health")[1]["sr"] == {"enabled": False}
        status, code, _ = error_of(post_image(server, to_png(make_image(8, 8))))
        assert (status, code) == (503, "unavailable")


def test_cli_upscale_writes_the_file(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(to_png(make_image(20, 30, channels=4)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "image_engine", "upscale", *a],  # noqa: E731
                                    cwd=str(REPO), capture_output=True, text=True, timeout=60)
    ok = run(str(src), str(tmp_path / "out.webp"), "--magnitude", "2")
    assert ok.returncode == 0, ok.stderr
    with Image.open(tmp_path / "out.webp") as out:
        assert out.size == (270, 180)
    bad = run(str(tmp_path / "nope.png"), str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "input file not found" in bad.stderr


def test_sigterm_cancels_the_running_job_and_exits_cleanly(big_png):
    env = {"SR_NUM_WORKERS": "1", "SR_INPUT_SIZE": "32", "SR_OUTPUT_SIZE": "96", "SR_THREADS": "1"}
    big = big_png
    server = ServerProcess(engine_argv(), env=env, startup_timeout=60).start()
    answers = []

    def send():
        try:
            answers.append(post_image(server, big)[0])
        except OSError as exc:  # the connection may close before the 503 is flushed
            answers.append(exc)

    try:
        client = threading.Thread(target=send)
        client.start()
        wait_for(lambda: server.get_json("/health")[1]["sr"]["pool"]["active"] == 1, timeout=30,
                 what="the big job running")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        client.join(60)
        assert answers and answers[0] != 200
        assert "cancelling queued and running jobs" in server.log_tail()
    finally:
        server.stop()
