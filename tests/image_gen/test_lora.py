"""LoRA merging: the tiny UNet's output moves by exactly the delta computed here in plain numpy, every key
that matches nothing is reported, and modes accept a LoRA only once it is merged into their model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="merging rewrites ONNX files: needs the onnx package (tools extra)")
ort = pytest.importorskip("onnxruntime")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the test writes LoRA files with the "
                                        "official safetensors package")

from onnx import helper, numpy_helper  # noqa: E402

from image_engine.lora_merge import LoraMergeError, LoraSpec, merge_loras  # noqa: E402
from image_engine.modes import ModeDefaults, ModesError, parse_modes  # noqa: E402

RANK = 2
ALPHA = 1.0
SCALE = 0.75
TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _unet_inits(model_dir) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_dir / "unet" / "model.onnx"))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _write_lora(path, rng, hidden: int, channels: int, extra: dict | None = None) -> dict[str, np.ndarray]:
    tensors = {
        # kohya naming on the cross-attention key projection (a MatMul on a transposed weight)
        f"{TO_K}.lora_down.weight": rng.standard_normal((RANK, hidden)).astype(np.float16),
        f"{TO_K}.lora_up.weight": rng.standard_normal((channels, RANK)).astype(np.float16),
        f"{TO_K}.alpha": np.array(ALPHA, dtype=np.float32),
        # PEFT naming on a 3x3 convolution (LoCon-style factors)
        "unet.conv_out.lora_A.weight": rng.standard_normal((RANK, channels, 3, 3)).astype(np.float32) * 0.1,
        "unet.conv_out.lora_B.weight": rng.standard_normal((channels, RANK, 1, 1)).astype(np.float32) * 0.1,
        # keys that must be reported, not dropped
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": np.ones((RANK, hidden), np.float32),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": np.ones((channels, RANK), np.float32),
        "unet.some_extra_tensor": np.zeros(3, np.float32),
        **(extra or {}),
    }
    safetensors_numpy.save_file(tensors, str(path))
    return tensors


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain numpy 'same' 3x3 convolution, NCHW, batch 1."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    _, _, h, wd = x.shape
    out = np.zeros((1, w.shape[0], h, wd), np.float64)
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, :, dy:dy + h, dx:dx + wd]
            out += np.einsum("oc,nchw->nohw", w[:, :, dy, dx], patch)
    return out + b.reshape(1, -1, 1, 1)


def _tiny_unet_numpy(inits: dict, feeds: dict) -> np.ndarray:
    """The tiny UNet's arithmetic written out (see image_engine.tiny_model), from its initializers."""
    text_mean = feeds["encoder_hidden_states"].mean(axis=1)
    bias = (text_mean @ inits["w_text"] + feeds["timestep_cond"] @ inits["w_cond"]
            + feeds["timestep"].astype(np.float64)[:, None] * 1e-3 * inits["w_time"])
    pre = _conv3x3(feeds["sample"], inits["w_conv"], inits["b_conv"]) + bias.reshape(1, -1, 1, 1)
    return np.tanh(pre) + 0.5 * feeds["sample"]


def _feeds(rng, hidden: int) -> dict:
    return {"sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
            "timestep": np.array([499], dtype=np.int64),
            "encoder_hidden_states": rng.standard_normal((1, 77, hidden)).astype(np.float32),
            "timestep_cond": rng.standard_normal((1, 256)).astype(np.float32)}


def _run_unet(model_dir, feeds) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_merged_unet_output_moves_by_the_expected_delta(tiny_model, tmp_path):
    rng = np.random.default_rng(7)
    inits = _unet_inits(tiny_model)
    hidden, channels = inits["w_text"].shape
    lora = _write_lora(tmp_path / "style.safetensors", rng, hidden, channels)
    reports = merge_loras(tiny_model, tmp_path / "merged", [LoraSpec(tmp_path / "style.safetensors", SCALE)])

    feeds = _feeds(rng, hidden)
    before, after = _run_unet(tiny_model, feeds), _run_unet(tmp_path / "merged", feeds)
    np.testing.assert_allclose(before, _tiny_unet_numpy(inits, feeds), atol=1e-5)

    # W' = W + scale * alpha/rank * up @ down, written independently of the merger
    down, up = lora[f"{TO_K}.lora_down.weight"].astype(np.float64), lora[f"{TO_K}.lora_up.weight"].astype(np.float64)
    expected = dict(inits)
    expected["w_text"] = inits["w_text"] + (SCALE * ALPHA / RANK * (up @ down)).T
    a, b = lora["unet.conv_out.lora_A.weight"], lora["unet.conv_out.lora_B.weight"]
    conv_delta = np.einsum("or,rihw->oihw", b[:, :, 0, 0], a)  # PEFT without alpha: factor 1 (alpha = rank)
    expected["w_conv"] = inits["w_conv"] + SCALE * conv_delta
    np.testing.assert_allclose(after, _tiny_unet_numpy(expected, feeds), atol=1e-5)
    assert np.abs(after - before).max() > 1e-3  # the LoRA really changed the output

    report = reports[0]
    assert sorted(m["module"] for m in report.matched) == [
        "conv_out", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    unmatched = {u["key"]: u["reason"] for u in report.unmatched}
    assert set(unmatched) == {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
                              "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight",
                              "unet.some_extra_tensor"}
    assert "no such layer" in unmatched["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"]
    recorded = json.loads((tmp_path / "merged" / "lora_merge.json").read_text())
    assert recorded["loras"][0]["scale"] == SCALE and recorded["loras"][0]["layers"] == 2
    assert not list((tmp_path / "merged").rglob("*.rknn"))  # stale NPU files are not carried over


def test_text_encoder_lora_on_an_exported_linear(tmp_path):
    """A bias-free Linear as torch exports it: MatMul ``/…/q_proj/MatMul`` on an anonymous (in, out) weight."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 5)).astype(np.float32)  # (in, out)
    node = helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"],
                            name="/text_model/encoder/layers.0/self_attn/q_proj/MatMul")
    graph = helper.make_graph([node], "te", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(weight, "onnx::MatMul_7")])
    src = tmp_path / "model"
    for part, g in (("text_encoder", graph), ("unet", graph)):
        (src / part).mkdir(parents=True)
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(src / part / "model.onnx"))
    key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    a, b = rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)
    safetensors_numpy.save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b, f"{key}.alpha":
                                 np.array(4.0, np.float32)}, str(tmp_path / "te.safetensors"))
    merge_loras(src, tmp_path / "out", [LoraSpec.parse(f"{tmp_path / 'te.safetensors'}:0.5")])
    merged = onnx.load(str(tmp_path / "out" / "text_encoder" / "model.onnx"))
    np.testing.assert_allclose(numpy_helper.to_array(merged.graph.initializer[0]),
                               weight + (0.5 * 4.0 / 2 * (b @ a)).T, atol=1e-6)


def test_a_lora_for_another_model_is_refused_and_nothing_is_written(tiny_model, tmp_path):
    safetensors_numpy.save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.ones((2, 4),
                                 np.float32), "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight":
                                 np.ones((4, 2), np.float32)}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(LoraMergeError, match="matched no layer.*text_encoder_2"):
        merge_loras(tiny_model, tmp_path / "out", [LoraSpec(tmp_path / "sdxl.safetensors")])
    assert not (tmp_path / "out").exists()


def test_merge_lora_cli_prints_the_report_and_fails_clearly(tiny_model, tmp_path):
    rng = np.random.default_rng(1)
    inits = _unet_inits(tiny_model)
    _write_lora(tmp_path / "style.safetensors", rng, *inits["w_text"].shape)
    cmd = [sys.executable, "-m", "image_engine", "merge-lora", str(tiny_model), "--lora",
           f"{tmp_path / 'style.safetensors'}:0.8", "--out", str(tmp_path / "merged")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 layer(s) merged, 3 key(s) matched nothing" in done.stdout
    assert "UNMATCHED unet.some_extra_tensor" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # --out exists now
    assert again.returncode == 2 and "exists already" in again.stderr
    strict = subprocess.run(cmd[:-1] + [str(tmp_path / "strict"), "--strict"], capture_output=True, text=True,
                            timeout=120)
    assert strict.returncode == 2 and "matched nothing (--strict)" in strict.stderr


def test_modes_accept_a_lora_only_once_merged(tiny_model, tmp_path):
    rng = np.random.default_rng(2)
    inits = _unet_inits(tiny_model)
    _write_lora(tmp_path / "style.safetensors", rng, *inits["w_text"].shape)
    merge_loras(tiny_model, tmp_path / "merged", [LoraSpec(tmp_path / "style.safetensors", 0.8)])
    text = "modes:\n  plain:\n    model: {plain}\n    loras: ['style.safetensors:0.8']\n"
    with pytest.raises(ModesError, match="not merged into .*image-engine merge-lora"):
        parse_modes(text.format(plain=tiny_model), tmp_path, ModeDefaults())
    wrong_scale = "modes:\n  m:\n    model: {d}\n    loras: ['style.safetensors:0.5']\n"
    with pytest.raises(ModesError, match=r"scale 0\.5"):
        parse_modes(wrong_scale.format(d=tmp_path / "merged"), tmp_path, ModeDefaults())
    config = parse_modes(text.format(plain=tmp_path / "merged"), tmp_path, ModeDefaults())
    assert config.modes["plain"].to_json()["loras"][0]["file"] == "style.safetensors"
