"""`image-engine convert` on an LCM model directory end to end, then `/generate` on the simulated parts."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from image_engine.pipeline import COMPONENTS
from image_engine.rknn_sidecar import read_sidecar
from image_engine.rknn_sim import SimulatorRKNNLite
from tests.support import ServerProcess

from .conftest import SIM_ENV, convert

BODY = {"prompt": "a cinematic forest at sunrise", "size": "96x64", "num_inference_steps": 4,
        "guidance_scale": 1.0, "superres": False}


def serve(model_root, env) -> ServerProcess:
    argv = [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1"]
    return ServerProcess(argv, env={"MODEL_ROOT": str(model_root), "NUM_WORKERS": "1", "SR_ENABLED": "0",
                                    "DEFAULT_SIZE": "96x64", **env}, startup_timeout=180)


@pytest.fixture(scope="module")
def servers(lcm_conversion, tiny_lcm):
    out, _ = lcm_conversion
    with serve(out, SIM_ENV) as sim, serve(tiny_lcm, {"LCM_BACKEND": "onnxruntime"}) as ort:
        yield sim, ort


def generate(server: ServerProcess, seed: int) -> np.ndarray:
    r = requests.post(server.url + "/generate", json={**BODY, "seed": seed}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["X-Seed"] == str(seed)
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.float32) / 255.0


def test_convert_writes_every_part_with_its_sidecar_and_reports_progress(lcm_conversion, tiny_lcm):
    out, result = lcm_conversion
    for i, part in enumerate(COMPONENTS, start=1):
        assert f"[{i}/3] {part}: fp16 built" in result.stdout
        record = read_sidecar(out / part / "model.rknn")
        assert (record.kind, record.dtype, record.target) == (part, "fp16", "rk3588")
        assert (out / part / "model.onnx").is_file() and record.source_onnx == "model.onnx"
    assert read_sidecar(out / "unet" / "model.rknn").input_shapes == [[1, 4, 8, 12], [1], [1, 77, 32], [1, 256]]
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "scheduler").is_dir()
    assert json.loads((out / "unet" / "config.json").read_text())["sample_size"] == [8, 12]
    report = json.loads((out / "conversion-report.json").read_text())
    assert report["kind"] == "lcm" and report["size"] == "96x64" and set(report["parts"]) == set(COMPONENTS)
    assert report["parts"]["text_encoder"]["cpu_ops"]["fp16"] == ["Gather"], "the embedding lookup runs on the CPU"
    assert report["generation"]["steps"] == 4 and report["generation"]["max_abs"] < 0.05
    assert "whole 4-step generation" in result.stdout
    assert not list(out.parent.glob("check*.onnx")), "the toolkit's debug dumps stay out of the working directory"


def test_generate_on_the_simulator_is_deterministic_per_seed_and_close_to_onnxruntime(servers):
    sim, ort = servers
    workers = requests.get(sim.url + "/api/models/status", timeout=10).json()["workers"]
    assert workers[0]["backend"] == "rknnlite"
    a, b, other = generate(sim, 1234), generate(sim, 1234), generate(sim, 99)
    assert np.array_equal(a, b), "same seed, same image"
    assert np.abs(a - other).mean() > 0.01, "another seed gives another image"
    ref = generate(ort, 1234)
    diff = np.abs(a - ref)
    assert diff.max() < 0.05 and diff.mean() < 0.005, (float(diff.max()), float(diff.mean()))


def test_other_sizes_are_refused_with_the_converted_one_named(servers):
    sim, _ = servers
    r = requests.post(sim.url + "/generate", json={**BODY, "size": "128x128", "seed": 1}, timeout=60)
    assert r.status_code == 400 and "96x64" in r.json()["error"]["message"]


def test_a_latent_in_the_wrong_layout_is_refused_with_rockchips_message(lcm_conversion):
    """The service hands RKNN NHWC latents; NCHW ones (1, 4, 8, 12) are what the simulator refuses."""
    out, _ = lcm_conversion
    lite = SimulatorRKNNLite()
    assert lite.load_rknn(out / "vae_decoder" / "model.rknn") == 0 and lite.init_runtime() == 0
    try:
        assert lite.inference(inputs=[np.zeros((1, 4, 8, 12), np.float32)], data_format="nhwc") is None
        assert "expect 'nhwc' like (1, 8, 12, 4)" in lite.last_error
        good = lite.inference(inputs=[np.zeros((1, 8, 12, 4), np.float32)], data_format="nhwc")
        assert good[0].shape == (1, 3, 64, 96)
    finally:
        lite.release()


def test_convert_with_a_lora_merges_it_first_and_a_mode_accepts_the_result(tiny_lcm, tmp_path):
    """``convert --lora``: the report lists the merged layers, the converted UNet carries the merged weights
    (its ONNX beside the .rknn), and a mode naming the LoRA accepts the output directory."""
    from onnx import load, numpy_helper
    from safetensors.numpy import save_file

    from image_engine.modes import ModeDefaults, parse_modes

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    rng = np.random.default_rng(5)
    down, up = rng.standard_normal((2, 32)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}, str(tmp_path / "style.safetensors"))
    out = tmp_path / "styled"
    result = convert(str(tiny_lcm), "--dtype", "fp16", "--size", "96x64", "--output", str(out),
                     "--lora", f"{tmp_path / 'style.safetensors'}:0.5", cwd=tmp_path)
    assert "1 layer(s) merged, 0 key(s) matched nothing" in result.stdout
    before = {i.name: numpy_helper.to_array(i) for i in load(str(tiny_lcm / "unet" / "model.onnx")).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in load(str(out / "unet" / "model.onnx")).graph.initializer}
    np.testing.assert_allclose(after["w_text"], before["w_text"] + (0.5 * (up @ down)).T, atol=1e-5)
    assert (out / "unet" / "model.rknn").is_file()
    modes = f"modes:\n  styled:\n    model: {out}\n    loras: ['style.safetensors:0.5']\n"
    assert parse_modes(modes, tmp_path, ModeDefaults()).modes["styled"].loras[0]["scale"] == 0.5
