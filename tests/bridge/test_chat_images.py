"""Images in chat on one real bridge (sim runtime, instant profile): the official ``openai`` client sending
``image_url`` data URLs and the ``ollama`` client sending ``images``; the vision encoder of a model store
entry run by onnxruntime (a tiny ONNX built here, with the model's preprocessor_config.json); image tokens
in usage and the context budget; the same image reusing the cached prefix, another one not; and each bad
input a 4xx JSON naming the problem."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import ollama
import openai
import pytest

from tests.conftest import write_sim_model
from tests.support import ServerProcess, bridge_argv

TEXT_MODEL = "text-sim"
SIM_VLM = "vlm-sim"  # VISION_ENCODER=sim
ONNX_VLM = "vlm-onnx"  # VISION_ENCODER=encoder.onnx
ENC_SIZE, PATCH, DIM = 28, 7, 8
N_TOKENS = (ENC_SIZE // PATCH) ** 2


def png(color, size=(40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def checker_png() -> bytes:
    from PIL import Image

    x = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([x, 255 - x, x], axis=-1)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side=60000) -> bytes:
    """A valid PNG header declaring side x side pixels (3.6 gigapixels) and almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def tiny_encoder(path) -> None:
    """pixel_values (1, 3, 28, 28) → a 7x7 stride-7 conv → (1, 16 tokens, 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((DIM, 3, PATCH, PATCH)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["pixel_values", "w"], ["c"], kernel_shape=[PATCH, PATCH],
                              strides=[PATCH, PATCH]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["image_embeds"], perm=[0, 2, 1])]
    graph = helper.make_graph(
        nodes, "tiny-vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, ENC_SIZE, ENC_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [1, N_TOKENS, DIM])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, DIM, N_TOKENS], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("vlm-models")
    write_sim_model(root, TEXT_MODEL, default_model_dir, SIM_REPLY_TOKENS=6)
    write_sim_model(root, SIM_VLM, default_model_dir, VISION_ENCODER="sim", SIM_REPLY_TOKENS=6)
    d = write_sim_model(root, ONNX_VLM, default_model_dir, VISION_ENCODER="encoder.onnx", SIM_REPLY_TOKENS=6,
                        MAX_NEW_TOKENS=8)
    tiny_encoder(d / "encoder.onnx")
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": ENC_SIZE,
                                                                             "width": ENC_SIZE}}))
    return root


@pytest.fixture(scope="module")
def bridge(vlm_dir):
    argv = bridge_argv(vlm_dir, "sim", "--sim-profile", "instant", "--chat-max-images", "2", "--no-images",
                       "--chat-max-image-bytes", "200000", "--port", "0")
    with ServerProcess(argv) as server:
        yield server


@pytest.fixture(scope="module")
def client(bridge):
    with openai.OpenAI(base_url=bridge.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def ask(*images: bytes, text="What is in the picture?") -> list:
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


RED, BLUE = png((200, 20, 20)), checker_png()


@pytest.mark.parametrize("model", [SIM_VLM, ONNX_VLM])
def test_openai_client_image_url_gives_an_image_dependent_reply(client, model):
    red = client.chat.completions.create(model=model, messages=ask(RED), max_tokens=6)
    blue = client.chat.completions.create(model=model, messages=ask(BLUE), max_tokens=6)
    again = client.chat.completions.create(model=model, messages=ask(RED), max_tokens=6)
    text = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What?"}],
                                          max_tokens=6)
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert red.choices[0].message.content == again.choices[0].message.content
    # the image counts as its tokens: 16 for both encoders here (4x4 grid / 28 px in 7 px patches)
    assert red.usage.prompt_tokens - text.usage.prompt_tokens >= N_TOKENS


def test_ollama_client_images_are_taken_on_chat_and_generate(bridge):
    c = ollama.Client(host=bridge.url)
    red = c.chat(model=SIM_VLM, messages=[{"role": "user", "content": "Describe.", "images": [RED]}],
                 options={"num_predict": 6})
    blue = c.chat(model=SIM_VLM, messages=[{"role": "user", "content": "Describe.", "images": [BLUE]}],
                  options={"num_predict": 6})
    gen = c.generate(model=SIM_VLM, prompt="Describe.", images=[RED], options={"num_predict": 6})
    assert red.message.content and red.message.content != blue.message.content
    assert gen.response and gen.prompt_eval_count >= N_TOKENS


def test_the_same_image_in_history_reuses_the_prefix_and_another_does_not(client):
    first = client.chat.completions.create(model=SIM_VLM, messages=ask(RED), max_tokens=6)
    follow = ask(RED) + [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "And the colour?"}]
    same = client.chat.completions.create(model=SIM_VLM, messages=follow, max_tokens=6)
    follow[0] = ask(BLUE)[0]
    other = client.chat.completions.create(model=SIM_VLM, messages=follow, max_tokens=6)
    cached = same.usage.prompt_tokens_details.cached_tokens if same.usage.prompt_tokens_details else 0
    assert cached >= first.usage.prompt_tokens
    assert not (other.usage.prompt_tokens_details and other.usage.prompt_tokens_details.cached_tokens)


def test_image_tokens_count_in_the_context_budget(bridge):
    # NUM_CTX 512: the text is ~40 tokens, so 460 new tokens fit without the images' 32 but not with them
    status, body = bridge.post_json("/v1/chat/completions", {"model": ONNX_VLM, "messages": ask(RED, BLUE),
                                                             "max_tokens": 460})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "32 of them for images" in body["error"]["message"]
    text_only = [{"role": "user", "content": "What is in the picture?"}]
    status, body = bridge.post_json("/v1/chat/completions", {"model": ONNX_VLM, "messages": text_only,
                                                             "max_tokens": 460})
    assert status == 200 and body["usage"]["prompt_tokens"] + 460 <= 512


@pytest.mark.parametrize("case, messages, model, code", [
    ("remote URL", [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://127.0.0.1:9/cat.png"}}]}], SIM_VLM, "remote_image_url"),
    ("not an image", ask(b"this is plain text, not a picture"), SIM_VLM, "invalid_image"),
    ("decompression bomb", ask(bomb_png()), SIM_VLM, "image_too_large"),
    ("too many images", ask(RED, BLUE, RED), SIM_VLM, "too_many_images"),
    ("too many bytes", ask(b"\x89PNG" + b"\0" * 200001), SIM_VLM, "image_too_large"),
    ("text-only model", ask(RED), TEXT_MODEL, "model_not_vision"),
    ("non-image data URL", [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:text/plain;base64,aGk="}}]}], SIM_VLM, "invalid_image"),
])
def test_bad_images_are_4xx_json_naming_the_problem(bridge, case, messages, model, code):
    status, body = bridge.post_json("/v1/chat/completions", {"model": model, "messages": messages,
                                                             "max_tokens": 2})
    assert 400 <= status < 500, case
    assert body["error"]["code"] == code, (case, body)
    assert body["error"]["message"]


def test_ollama_bad_base64_is_a_400(bridge):
    status, body = bridge.post_json("/api/chat", {"model": SIM_VLM, "stream": False, "messages": [
        {"role": "user", "content": "x", "images": ["not base64!"]}]})
    assert status == 400 and body["error"]["code"] == "invalid_image" and "base64" in body["error"]["message"]


def test_the_host_runtime_says_it_has_no_vision_model(vlm_dir):
    from rk_common.chat_images import ImageLimits
    from rkllama_bridge.image_prompts import ImagePrompts
    from rkllama_bridge.runtimes.host import HostRuntime
    from rkllama_bridge.store import ModelStore

    stored = ModelStore(vlm_dir).get(SIM_VLM)
    with pytest.raises(Exception) as refused:
        ImagePrompts(HostRuntime(), ImageLimits()).check_accepts(stored, 1)
    assert refused.value.status == 400 and refused.value.code == "runtime_not_vision"
    assert "host runtime" in refused.value.message and "no vision model" in refused.value.message


def test_preprocessing_follows_the_model_config():
    from rkllama_bridge.vision import CLIP_MEAN, preprocess_for

    pre = preprocess_for({"image_mean": [0.5] * 3, "image_std": [0.25] * 3, "size": {"shortest_edge": 14}}, None)
    assert (pre.width, pre.height, pre.mean, pre.std) == (14, 14, (0.5,) * 3, (0.25,) * 3)
    assert preprocess_for({}, (32, 24)).mean == CLIP_MEAN and preprocess_for({}, (32, 24)).width == 32
    from PIL import Image

    x = pre.normalised(Image.new("RGB", (40, 10), (255, 255, 255)))
    assert x.shape == (1, 3, 14, 14) and x.dtype == np.float32
    assert x[0, :, 7, 7].tolist() == [2.0, 2.0, 2.0]  # white: (1 - 0.5) / 0.25
    assert abs(float(x[0, 0, 0, 7])) < 0.05  # the padding is the mean colour: ~0 once normalised


def native(bridge, ids, images, positions):
    import requests

    body = {"model": SIM_VLM, "prompt_token_ids": ids, "max_new_tokens": 6,
            "images": [base64.b64encode(im).decode() for im in images], "image_positions": positions}
    with requests.post(bridge.url + "/v1/generate", json=body, timeout=60) as resp:
        if resp.status_code != 200:
            return resp.status_code, resp.json()
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    return 200, ([x["token_id"] for x in lines if "token_id" in x], lines[-1])


def test_native_stream_takes_images_at_token_positions(bridge):
    ids = [1, 9690, 198, 2, 1, 4093, 198]
    status, (red, done) = native(bridge, ids, [RED], [4])
    _, (blue, _) = native(bridge, ids, [BLUE], [4])
    _, (red_again, _) = native(bridge, ids, [RED], [4])
    assert status == 200 and red != blue and red == red_again
    assert done["usage"]["prompt_tokens"] == len(ids) + N_TOKENS
    status, body = native(bridge, ids, [RED], [len(ids) + 1])
    assert status == 400 and body["error"]["code"] == "invalid_image_positions"
    status, body = native(bridge, ids, [RED, BLUE], [4])
    assert status == 400 and body["error"]["code"] == "invalid_image_positions"


@pytest.fixture(scope="module")
def gateway(bridge, tmp_path_factory):
    import sys

    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url]
    env = {"EXO_HOME": str(tmp_path_factory.mktemp("exo-home-vlm")), "RKLLM_SERVERS": ""}
    with ServerProcess(argv, env=env, startup_timeout=60) as server:
        yield server


def test_gateway_carries_image_urls_to_the_bridge(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        red = c.chat.completions.create(model=SIM_VLM, messages=ask(RED), max_tokens=6)
        blue = c.chat.completions.create(model=SIM_VLM, messages=ask(BLUE), max_tokens=6)
        again = c.chat.completions.create(model=SIM_VLM, messages=ask(RED), max_tokens=6)
        assert red.choices[0].message.content != blue.choices[0].message.content
        assert red.choices[0].message.content == again.choices[0].message.content
        for messages, model, code in [(ask(RED), TEXT_MODEL, "model_not_vision"),
                                      (ask(b"not an image"), SIM_VLM, "invalid_image"),
                                      ([{"role": "user", "content": [{"type": "image_url", "image_url": {
                                          "url": "https://example.com/a.png"}}]}], SIM_VLM, "remote_image_url")]:
            with pytest.raises(openai.BadRequestError) as refused:
                c.chat.completions.create(model=model, messages=messages, max_tokens=2)
            assert refused.value.body["code"] == code


def fnv1a(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="gcc is needed to build the stub librkllmrt")
@pytest.mark.parametrize("abi", ["1.1", "1.3"])
def test_rkllm_bridge_hands_the_encoders_embeddings_to_the_library(vlm_dir, default_tokenizer, tmp_path, abi):
    """The bridge on the stub librkllmrt: the ONNX encoder's output for the image arrives in
    RKLLMMultiModalInput byte for byte; 1.1 takes one image per prompt (two are a 400)."""
    from rk_common.chat_images import ImageLimits, check_image
    from rkllama_bridge.vision import load_encoder

    from ..native.build import stub_env

    record = tmp_path / "calls.jsonl"
    env = stub_env(abi, reply_ids=default_tokenizer.encode("A red square."), record=record, embed_dim=DIM)
    with ServerProcess(bridge_argv(vlm_dir, "rkllm", "--no-images", "--port", "0"), env=env) as bridge:
        status, body = bridge.post_json("/v1/chat/completions", {"model": ONNX_VLM, "messages": ask(RED),
                                                                 "max_tokens": 8})
        assert status == 200, body
        status, two = bridge.post_json("/v1/chat/completions", {"model": ONNX_VLM, "messages": ask(RED, BLUE),
                                                                "max_tokens": 4})
    run = [json.loads(line) for line in record.read_text().splitlines() if '"run"' in line][0]
    checked = check_image(RED, ImageLimits())
    expected = load_encoder(ONNX_VLM, vlm_dir / ONNX_VLM, "encoder.onnx").encode(checked.image, checked.digest)
    assert run["input_type"] == "multimodal" and run["prompt"].count("<image>") == 1
    assert run["image"]["n_image_tokens"] == N_TOKENS and run["image"]["embed_floats"] == N_TOKENS * DIM
    assert run["image"]["embed_fnv1a"] == fnv1a(expected.embedding.tobytes())
    assert body["usage"]["prompt_tokens"] >= N_TOKENS
    if abi == "1.1":
        assert status == 400 and two["error"]["code"] == "too_many_images"
    else:
        assert status == 200 and two["usage"]["prompt_tokens"] >= 2 * N_TOKENS


def test_an_rknn_encoder_takes_uint8_nhwc_pixels_and_an_npu_turn(tmp_path, monkeypatch):
    """``encoder.rknn`` runs on RKNNLite (here the fake that runs the sibling ONNX): raw uint8 pixels, NHWC
    at RKNNLite's boundary, at the preprocessor config's size (mean/std are baked into an RKNN model), one
    arbiter turn per image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    from rkllama_bridge.arbiter import NpuArbiter
    from rkllama_bridge.vision import load_encoder

    # The sibling ONNX the fake runs (it turns RKNNLite's NHWC input back to NCHW): uint8 (1, 3, 14, 14) ->
    # the mean of each 7x7 patch and channel, (1, 4 tokens, 3)
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["f", "s1"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[3, 5], keepdims=0),
             helper.make_node("Reshape", ["m", "s2"], ["t"]),
             helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1])]
    graph = helper.make_graph(nodes, "patches", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
                              [numpy_helper.from_array(np.array([1, 3, 2, 7, 2, 7], np.int64), "s1"),
                               numpy_helper.from_array(np.array([1, 3, 4], np.int64), "s2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "encoder.onnx"))
    (tmp_path / "encoder.rknn").write_bytes(b"rknn placeholder: the fake loads encoder.onnx\n")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 14, "width": 14}}))
    monkeypatch.setenv("IMAGE_ENGINE_FAKE_RKNN", "1")
    arbiter = NpuArbiter()
    enc = load_encoder("m", tmp_path, "encoder.rknn", lambda: arbiter.turn("vision"))
    left_red = Image.new("RGB", (14, 14), (0, 0, 255))
    left_red.paste((255, 0, 0), (0, 0, 7, 14))
    out = enc.encode(left_red, "0" * 64).embedding
    assert out.shape == (4, 3)
    assert out[0].tolist() == [255.0, 0.0, 0.0] and out[1].tolist() == [0.0, 0.0, 255.0]  # raw pixels, not normalised
    assert arbiter.snapshot()["kinds"]["vision"]["turns"] == 1
