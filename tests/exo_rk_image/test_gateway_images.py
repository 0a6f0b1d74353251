"""The gateway's /v1/images/generations: the official openai client → gateway → engine → a bridge whose
mounted image routes serve a tiny LCM model."""

import base64
import io
import sys

import openai
import pytest
from PIL import Image

from image_engine.tiny_model import write_tiny_model
from rkllama_bridge.config import image_env_for_bridge
from tests.support import ServerProcess, bridge_argv


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, sim_models_dir):
    model = write_tiny_model(tmp_path_factory.mktemp("gw-image") / "tiny", 64, 64, seed=5)
    env = image_env_for_bridge({"MODEL_ROOT": str(model), "DEFAULT_SIZE": "64x64", "NUM_WORKERS": "1"})
    with ServerProcess(bridge_argv(sim_models_dir, "sim", "--sim-profile", "instant"), env=env) as bridge:
        home = tmp_path_factory.mktemp("gw-exo-home")
        argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url]
        with ServerProcess(argv, env={"EXO_HOME": str(home)}) as gw:
            yield gw


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _image(result) -> tuple:
    raw = base64.b64decode(result.data[0].b64_json)
    return raw, Image.open(io.BytesIO(raw))


def test_openai_client_gets_an_image_and_the_seed_makes_it_repeatable(client):
    kwargs = dict(model="stable-diffusion-2-1-base", prompt="a red fox", size="64x64", response_format="b64_json")
    first_raw, first = _image(client.images.generate(**kwargs, extra_body={"seed": 7, "num_inference_steps": 2}))
    again_raw, _ = _image(client.images.generate(**kwargs, extra_body={"seed": 7, "num_inference_steps": 2}))
    other_raw, _ = _image(client.images.generate(**kwargs, extra_body={"seed": 8, "num_inference_steps": 2}))
    assert first.size == (64, 64) and first.format == "PNG"
    assert first_raw == again_raw and first_raw != other_raw


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": ""}, "'prompt'"),
    ({"prompt": "x", "n": 2}, "'n'"),
    ({"prompt": "x", "response_format": "url"}, "response_format"),
    ({"prompt": "x", "size": "big"}, "'size'"),
    ({"prompt": "x", "model": "qwen2.5-3b-rkllm"}, "'model'"),
])
def test_bad_image_requests_are_400(gateway, body, fragment):
    status, reply = gateway.post_json("/v1/images/generations", body)
    assert status == 400 and fragment in reply["error"]["message"]
