"""RKNNImageInferenceEngine driven the way legacy exo's node and ChatGPT API drive image models.

The harness below restates exo's loop (``exo/orchestration/node.py`` ``process_inference_result`` and
``handle_stable_diffusion``, ``exo/api/chatgpt_api.py`` ``handle_post_image_generations``) against a real
``image-engine serve`` subprocess serving a tiny LCM model.
"""

import asyncio
import base64
import io
import signal
import socket
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from exo_rk.compat import Shard
from exo_rk.image_engine import (
    STATE_IMAGE_PARAMS,
    ImageGenerationError,
    ImageSettings,
    RKNNImageInferenceEngine,
)
from image_engine.tiny_model import write_tiny_model
from tests.support import ServerProcess

SD_ID = "stable-diffusion-2-1-base"
SHARD = Shard(SD_ID, 0, 30, 31)  # exo's card: 31 layers, one node holds them all


def serve(model_dir, size, **env):
    argv = [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1"]
    return ServerProcess(argv, env={"MODEL_ROOT": str(model_dir), "DEFAULT_SIZE": size, "NUM_WORKERS": "1",
                                    **env})


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    model = write_tiny_model(tmp_path_factory.mktemp("exo-image") / "tiny", 64, 64, seed=9)
    with serve(model, "64x64") as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("exo-image") / "slow", 512, 512, seed=2, unet_layers=12)


def engine_for(*urls, step_timeout=60.0):
    return RKNNImageInferenceEngine(settings=ImageSettings(tuple(urls), step_timeout=step_timeout))


async def exo_node_generate(engine, prompt, request_id, inference_state=None):
    """exo's node loop for ``stable-diffusion-2-1-base``; returns what its API callback receives."""
    received = []
    state = {"image": None} if inference_state is None else inference_state
    result, state = await engine.infer_prompt(request_id, SHARD, prompt, state)
    while True:
        is_finished = state.get("is_finished", False)  # read before handle_stable_diffusion, as exo does
        if state["is_step_finished"]:
            state["step"] += 1
        received.append((result, is_finished, dict(state)))
        if is_finished:
            return received
        result, state = await engine.infer_tensor(request_id, SHARD, result, state)


def exo_api_lines(received, tmp_path):
    """What exo's image API writes per result: a progress line for a list, a saved PNG for an array."""
    lines = []
    for result, _finished, _state in received:
        if isinstance(result, list):
            lines.append(("progress", result[0], result[1]))
        else:
            path = tmp_path / "out.png"
            Image.fromarray(np.array(result)).save(path)
            lines.append(("image", path))
    return lines


async def test_node_loop_gets_one_state_per_step_and_a_final_image(image_server, tmp_path):
    engine = engine_for(image_server.url)
    try:
        params = {STATE_IMAGE_PARAMS: {"seed": 77, "num_inference_steps": 4}}
        received = await exo_node_generate(engine, "a cinematic forest at sunrise", "req-1",
                                           {"image": None, **params})
    finally:
        await engine.cleanup()
    states = [s for _, _, s in received]
    assert [(s["step"], s["total_steps"], s["is_step_finished"], s["is_finished"]) for s in states] == [
        (1, 4, True, False), (2, 4, True, False), (3, 4, True, False), (4, 4, True, True)]
    assert [r for r, _, _ in received[:3]] == [[1, 4], [2, 4], [3, 4]]
    final = received[-1][0]
    assert isinstance(final, np.ndarray) and final.dtype == np.uint8 and final.shape == (64, 64, 3)
    same = await asyncio.to_thread(requests.post, image_server.url + "/generate", timeout=60,
                                   json={"prompt": "a cinematic forest at sunrise", "seed": 77,
                                         "num_inference_steps": 4})
    assert np.array_equal(final, np.asarray(Image.open(io.BytesIO(same.content)).convert("RGB")))
    lines = exo_api_lines(received, tmp_path)
    assert [x[0] for x in lines] == ["progress"] * 3 + ["image"]
    assert Image.open(lines[-1][1]).size == (64, 64)


async def test_exo_without_parameters_uses_the_mode_defaults(image_server):
    engine = engine_for(image_server.url)
    try:
        received = await exo_node_generate(engine, "a cat", "req-2")
    finally:
        await engine.cleanup()
    assert received[-1][2]["total_steps"] == 4 and received[-1][1] is True
    assert received[-1][0].shape == (64, 64, 3)
    assert isinstance(received[-1][2]["seed"], int)


async def test_a_refused_request_raises_before_the_first_step(image_server):
    engine = engine_for(image_server.url)
    try:
        with pytest.raises(ImageGenerationError, match="built for 64x64"):
            await exo_node_generate(engine, "x", "req-3", {"image": None, STATE_IMAGE_PARAMS: {"size": "128x128"}})
    finally:
        await engine.cleanup()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_an_unreachable_server_fails_over_to_the_next(image_server):
    engine = engine_for(closed_port_url(), image_server.url)
    try:
        received = await exo_node_generate(engine, "a dog", "req-4")
    finally:
        await engine.cleanup()
    assert received[-1][1] is True and received[-1][0].shape == (64, 64, 3)


async def test_server_death_mid_generation_ends_the_request_instead_of_hanging(slow_model):
    with serve(slow_model, "512x512", DEFAULT_STEPS="50") as srv:
        engine = engine_for(srv.url, step_timeout=30.0)
        try:
            result, state = await engine.infer_prompt("req-5", SHARD, "slow", {"image": None})
            assert result == [1, 50] and state["is_finished"] is False
            srv.kill(signal.SIGKILL)
            while not state["is_finished"]:
                state["step"] += 1
                result, state = await engine.infer_tensor("req-5", SHARD, result, state)
        finally:
            await engine.cleanup()
    assert state["is_finished"] is True and state["error"]
    assert isinstance(result, list) and result[0] < 50


async def test_the_rkllm_engine_delegates_image_ids(image_server, monkeypatch):
    from exo_rk.engine import RKLLMInferenceEngine

    monkeypatch.setenv("RKNN_IMAGE_SERVERS", image_server.url)
    engine = RKLLMInferenceEngine()
    try:
        received = await exo_node_generate(engine, "a city", "req-6",
                                           {"image": None, STATE_IMAGE_PARAMS: {"seed": 5}})
    finally:
        await engine.cleanup()
    assert received[-1][1] is True and received[-1][0].shape == (64, 64, 3)
    b64 = await asyncio.to_thread(requests.post, image_server.url + "/generate", timeout=60,
                                  json={"prompt": "a city", "seed": 5, "response_format": "b64_json"})
    expected = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64.json()["image"]))).convert("RGB"))
    assert np.array_equal(received[-1][0], expected)


async def test_generate_like_exo_returns_the_image_and_reports_steps(image_server):
    from exo_rk.image_engine import generate_like_exo

    engine = engine_for(image_server.url)
    steps = []

    async def on_step(step, total):
        steps.append((step, total))

    try:
        image, state = await generate_like_exo(engine, SHARD, "a city", request_id="req-7",
                                               params={"seed": 5, "num_inference_steps": 3}, on_step=on_step)
    finally:
        await engine.cleanup()
    assert steps == [(1, 3), (2, 3), (3, 3)] and state["seed"] == 5
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


async def test_partial_shards_are_refused_with_a_reason(image_server):
    from exo_rk.errors import PartialShardError

    engine = engine_for(image_server.url)
    try:
        with pytest.raises(PartialShardError, match="runs whole"):
            await engine.infer_prompt("req-8", Shard(SD_ID, 0, 14, 31), "a cat", {"image": None})
    finally:
        await engine.cleanup()


async def test_exos_sizeless_request_gets_the_models_own_size(tmp_path):
    """No DEFAULT_SIZE and no mode file: a 96x96 model answers exo's request (which names no size) at 96x96
    (before: the server assumed 512x512 and refused it)."""
    model = write_tiny_model(tmp_path / "tiny96", 96, 96, seed=3)
    with serve(model, "") as server:
        engine = engine_for(server.url)
        try:
            received = await exo_node_generate(engine, "a lighthouse", "req-size")
        finally:
            await engine.cleanup()
        status, modes = server.get_json("/api/modes")
    assert received[-1][1] is True and received[-1][0].shape == (96, 96, 3)
    assert status == 200 and modes["modes"]["default"]["default_size"] == "96x96"
