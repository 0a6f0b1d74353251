"""The KServe model server (kserve's own ModelServer, started for real) with the tiny LCM model: the SDXL
runtime's V1 payload, V2 infer, readiness, refusals — and the same image as ``POST /generate`` for a seed."""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest
import requests
from PIL import Image

pytest.importorskip("kserve", reason="the KServe model server needs the kserve extra")

from image_engine.tiny_model import write_tiny_model  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("kserve") / "tiny", SIZE, SIZE, seed=11)


@pytest.fixture(scope="module")
def kserve_server(model_dir):
    argv = [sys.executable, "-m", "image_engine", "kserve", "--model-root", str(model_dir), "--model-name", "model"]
    with ServerProcess(argv, health_path="/v2/health/ready", env={"SR_NUM_WORKERS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def image_server(model_dir):
    argv = [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1"]
    with ServerProcess(argv, env={"MODEL_ROOT": str(model_dir), "SR_NUM_WORKERS": "1"}) as srv:
        yield srv


def seed_002_instance(**extra) -> dict:
    """The SDXL runtime's client payload, at the tiny model's size."""
    return {"prompt": "grey tabby cat with green eyes hiding inside a cardboard box, photograph, nikon, detailed, 8k",
            "guidance_scale": 8.0, "num_inference_steps": 4, "crops_coords_top_left": [256, 0],
            "width": SIZE, "height": SIZE, "denoising_limit": 0.8, **extra}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def predict(srv, body, name="model"):
    return requests.post(f"{srv.url}/v1/models/{name}:predict", json=body, timeout=120)


def test_v1_predict_with_the_sdxl_runtime_payload_matches_generate(kserve_server, image_server):
    resp = predict(kserve_server, {"instances": [seed_002_instance(seed=1234)]})
    assert resp.status_code == 200, resp.text
    prediction = resp.json()["predictions"][0]
    assert prediction["model_name"] == "model" and prediction["prompt"].startswith("grey tabby cat")
    assert prediction["image"]["format"] == "PNG" and prediction["seed"] == 1234
    assert prediction["ignored_fields"] == ["crops_coords_top_left", "denoising_limit"]
    image = pixels(base64.b64decode(prediction["image"]["b64"]))
    assert image.shape == (SIZE, SIZE, 3)

    generated = requests.post(image_server.url + "/generate", timeout=120, json={
        "prompt": prediction["prompt"], "size": f"{SIZE}x{SIZE}", "num_inference_steps": 4,
        "guidance_scale": 8.0, "seed": 1234})
    assert generated.status_code == 200 and generated.headers["X-Seed"] == "1234"
    np.testing.assert_array_equal(image, pixels(generated.content))

    other = predict(kserve_server, {"instances": [seed_002_instance(seed=1235)]}).json()
    assert not np.array_equal(image, pixels(base64.b64decode(other["predictions"][0]["image"]["b64"])))


def test_v2_infer_gives_the_same_image_as_v1(kserve_server):
    body = {"inputs": [
        {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a cat at sunset"]},
        {"name": "num_inference_steps", "shape": [1], "datatype": "INT32", "data": [4]},
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [77]},
        {"name": "width", "shape": [1], "datatype": "INT32", "data": [SIZE]},
        {"name": "height", "shape": [1], "datatype": "INT32", "data": [SIZE]}]}
    resp = requests.post(kserve_server.url + "/v2/models/model/infer", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert outputs["seed"]["data"] == [77] and outputs["image"]["datatype"] == "BYTES"
    v2 = pixels(base64.b64decode(outputs["image"]["data"][0]))
    v1 = predict(kserve_server, {"instances": [{"prompt": "a cat at sunset", "num_inference_steps": 4,
                                                "seed": 77, "width": SIZE, "height": SIZE}]}).json()
    np.testing.assert_array_equal(v2, pixels(base64.b64decode(v1["predictions"][0]["image"]["b64"])))


def test_readiness_routes(kserve_server):
    assert requests.get(kserve_server.url + "/v1/models/model", timeout=10).json() == {"name": "model", "ready": True}
    assert requests.get(kserve_server.url + "/v2/models/model/ready", timeout=10).status_code == 200
    assert requests.get(kserve_server.url + "/v1/models/nope", timeout=10).status_code == 404


@pytest.mark.parametrize("body, needle", [
    ({"instances": [seed_002_instance(use_refiner=True, denoising_end=0.8)]}, "['denoising_end', 'use_refiner']"),
    ({"instances": [seed_002_instance(prompt_2="a dog")]}, "prompt_2"),
    ({"instances": [seed_002_instance(bogus=1)]}, "bogus"),
    ({"instances": [seed_002_instance(num_inference_steps=0)]}, "num_inference_steps"),
    ({"instances": [seed_002_instance(width=128, height=128)]}, "128"),
    ({"instances": []}, "1-8"),
    ({"prompt": "no instances"}, "instances"),
], ids=["refiner", "second-encoder", "unknown", "steps", "size", "empty", "not-v1"])
def test_bad_requests_are_400_naming_the_problem(kserve_server, body, needle):
    resp = predict(kserve_server, body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]
    assert predict(kserve_server, {"instances": [seed_002_instance(seed=1)]}).status_code == 200


def test_v2_unknown_input_is_400(kserve_server):
    body = {"inputs": [{"name": "refiner", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    resp = requests.post(kserve_server.url + "/v2/models/model/infer", json=body, timeout=60)
    assert resp.status_code == 400 and "refiner" in resp.json()["error"]
