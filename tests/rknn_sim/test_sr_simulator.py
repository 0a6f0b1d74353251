"""Super-resolution on converted ESPCN models, run by Rockchip's simulator behind `image-engine serve`."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from PIL import Image

from image_engine.errors import RuntimeFailure
from image_engine.rknn_sidecar import read_sidecar, sidecar_path
from image_engine.rknn_sim import SimulatorRKNNLite
from image_engine.runtimes import load_runtime
from image_engine.sr import TileGeometry, Upscaler, rgb_to_ycbcr, tile_starts
from image_engine.train_espcn import psnr
from tests.image.imgutil import engine_argv, make_image, post_image, to_png
from tests.support import REPO, ServerProcess

from .conftest import SIM_ENV

TILE = 224


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def truth_and_input() -> tuple[np.ndarray, bytes]:
    """A 510x330 scene and its x3-downscaled PNG (170x110 input pixels: 2x1 tiles of 224 with margins)."""
    from image_engine.convert_sr import downscale_rgb

    hr = make_image(330, 510, seed=11)
    return hr, to_png(downscale_rgb(hr))


@pytest.fixture(scope="module")
def servers(sr_conversions):
    """One image-engine per model: onnxruntime on the shipped ONNX, the simulator on each conversion."""
    started = {}
    try:
        started["onnxruntime"] = ServerProcess(engine_argv(), env={"SR_NUM_WORKERS": "1"}).start()
        for dtype, path in sr_conversions.items():
            env = {**SIM_ENV, "SR_MODEL_PATH": str(path), "SR_NUM_WORKERS": "1"}
            started[dtype] = ServerProcess(engine_argv(), env=env, startup_timeout=180).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def answers(servers, truth_and_input) -> dict[str, tuple]:
    _, data = truth_and_input
    return {name: post_image(server, data, timeout=120) for name, server in servers.items()}


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_superres_answers_the_converted_model_with_its_headers_and_size(servers, answers, dtype):
    status, headers, body = answers[dtype]
    assert status == 200, body[:500]
    assert headers["X-SuperRes"] == "1" and headers["X-SR-Model"] == "espcn_x3.rknn"
    assert (headers["X-SR-Scale"], headers["X-SR-Passes"]) == ("3", "1")
    with Image.open(io.BytesIO(body)) as img:
        assert img.size == (510, 330)
    worker = servers[dtype].get_json("/health")[1]["sr"]["workers"][0]
    assert (worker["backend"], worker["runtime"]) == ("rknnlite", "rknn-toolkit2 simulator")
    assert worker["core_mask"] == 1, "the service still asks for core 0; the simulator runs AUTO (see its log)"


def test_fp16_psnr_is_within_0_05_db_of_onnxruntime(answers, truth_and_input):
    hr, _ = truth_and_input
    y_true = rgb_to_ycbcr(hr)[..., 0]
    db = {name: psnr(rgb_to_ycbcr(decode(answers[name][2]))[..., 0], y_true) for name in ("onnxruntime", "fp16")}
    assert abs(db["fp16"] - db["onnxruntime"]) <= 0.05, db


def test_int8_differs_from_onnxruntime_more_than_fp16(answers):
    ref = decode(answers["onnxruntime"][2])
    err = {d: float(np.abs(decode(answers[d][2]) - ref).mean()) for d in ("fp16", "int8")}
    assert err["int8"] > err["fp16"], err


def seam_score(out: np.ndarray, ref: np.ndarray, geometry: TileGeometry, columns: int) -> float:
    """How much the error (out - ref) jumps between neighbouring columns at tile borders, relative to its
    jumps elsewhere: about 1 without seams, much more when tiles are cut edge to edge."""
    err = out - ref
    jump = np.abs(np.diff(err, axis=1)).mean(axis=0)
    g = geometry
    stride = g.tile - 2 * g.margin - g.blend
    # where tile k+1 takes over from tile k (its blend band), in output pixels of the unpadded image
    starts = tile_starts(max(columns + 2 * g.margin, g.tile), g.tile, stride)[1:]
    near = [(start * g.scale) + k for start in starts for k in range(-3 * g.scale, (g.blend + 3) * g.scale)
            if 0 <= start * g.scale + k < len(jump)]
    return float(jump[near].max() / np.median(jump))


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_no_seams_at_tile_borders(sr_conversions, dtype):
    """The luma of a 3-tile-wide image through the service's tiler on the simulator, against onnxruntime run
    on the whole image; a control cut without margin or blend must show the seams the score detects."""
    y = rgb_to_ycbcr(make_image(200, 560, seed=5))[..., 0]
    with load_runtime(sr_conversions[dtype].with_suffix(".onnx"), "onnxruntime") as ort:
        ref = Upscaler(ort, TileGeometry(None)).upscale_y(y)
    with load_runtime(sr_conversions[dtype], rknn_lite_cls=SimulatorRKNNLite) as sim:
        blended = TileGeometry(TILE)
        score = seam_score(Upscaler(sim, blended).upscale_y(y), ref, blended, y.shape[1])
        cut = TileGeometry(TILE, margin=0, blend=0)
        control = seam_score(Upscaler(sim, cut).upscale_y(y), ref, cut, y.shape[1])
    assert control > 3.0, f"the control should show seams (score {control:.2f})"
    assert score < 3.0, f"tile borders stand out: score {score:.2f} (control {control:.2f})"


def test_wrong_tile_size_is_refused_at_start_up_with_rockchips_reason(sr_conversions):
    env = {**__import__("os").environ, **SIM_ENV, "SR_MODEL_PATH": str(sr_conversions["fp16"]),
           "SR_INPUT_SIZE": "200", "SR_OUTPUT_SIZE": "600"}
    result = subprocess.run(engine_argv("--port", "0"), env=env, cwd=str(REPO), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "does not map 200px tiles to 600px (SR_INPUT_SIZE/SR_OUTPUT_SIZE)" in result.stderr, result.stderr[-3000:]
    assert "expect 'nhwc' like (1, 224, 224, 1)" in result.stderr, result.stderr[-3000:]


def test_runtime_records_the_asked_core_mask_and_runs_auto(sr_conversions):
    before = len(SimulatorRKNNLite.inits())
    with load_runtime(sr_conversions["fp16"], rknn_lite_cls=SimulatorRKNNLite, core_index=1) as rt:
        assert rt.core_mask == 2
        out = rt.run({"input": np.zeros((1, 1, TILE, TILE), np.float32)})
    assert out[0].shape == (1, 1, 3 * TILE, 3 * TILE)
    (call,) = SimulatorRKNNLite.inits()[before:]
    assert (call.requested_core_mask, call.core_mask) == (2, 0)


def test_refused_input_becomes_a_runtime_failure_with_the_reason(sr_conversions):
    with load_runtime(sr_conversions["int8"], rknn_lite_cls=SimulatorRKNNLite) as rt:
        with pytest.raises(RuntimeFailure, match=r"no output .* expect 'nhwc' like \(1, 224, 224, 1\)"):
            rt.run({"input": np.zeros((1, 1, 100, 100), np.float32)})


def test_changed_onnx_or_missing_sidecar_fails_the_load(sr_conversions, tmp_path):
    src = sr_conversions["fp16"]
    record = read_sidecar(src)
    model = tmp_path / src.name
    model.write_bytes(src.read_bytes())
    with pytest.raises(RuntimeFailure, match="was not made by `image-engine convert`"):
        load_runtime(model, rknn_lite_cls=SimulatorRKNNLite)
    (tmp_path / src.with_suffix(".onnx").name).write_bytes(b"not the model that was converted")
    record.source_onnx = src.with_suffix(".onnx").name
    sidecar_path(model).write_text(sidecar_path(src).read_text().replace(str(read_sidecar(src).source_onnx),
                                                                         record.source_onnx))
    with pytest.raises(RuntimeFailure, match="changed since espcn_x3.rknn was converted"):
        load_runtime(model, rknn_lite_cls=SimulatorRKNNLite)
