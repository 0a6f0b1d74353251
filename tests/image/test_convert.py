"""`image-engine convert` where rknn-toolkit2 is absent (the main venv), and its pure parts: the dtype
choice, the build-log parser and the sidecar. The conversions themselves run in tests/rknn_sim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from image_engine.convert_lcm import PartScore, choose_part_dtype
from image_engine.convert_sr import ImageScore, choose_dtype
from image_engine.rknn_sidecar import BuildRecord, SidecarError, read_sidecar, sidecar_path, write_sidecar
from image_engine.rknn_toolkit import parse_cpu_ops
from tests.support import REPO

TOOLKIT_HERE = importlib.util.find_spec("rknn") is not None


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image_engine", "convert", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(TOOLKIT_HERE, reason="rknn-toolkit2 is installed here: the missing-toolkit message cannot show")
def test_without_the_toolkit_convert_says_how_to_install_it(sr_model, tmp_path):
    result = convert(str(sr_model), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "pip install 'exo-rk[convert]' && pip install --no-deps rknn-toolkit2==2.5.0" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the toolkit is known to be there"


@pytest.mark.parametrize("args,message", [(["--size", "big"], "--size"), (["--tile", "4"], "--tile 4"),
                                          (["--calibration", "/nonexistent"], "is not a directory"),
                                          (["--steps", "0"], "--steps"),
                                          (["--lora", "style.safetensors"], "--lora applies to an LCM model")])
def test_bad_arguments_are_reported_before_any_work(sr_model, args, message):
    result = convert(str(sr_model), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def scores(losses: dict[str, float]) -> list[ImageScore]:
    return [ImageScore(name, "30x30", 27.0, 30.0, {"fp16": 30.0, "int8": 30.0 - loss}) for name, loss in losses.items()]


def test_auto_keeps_int8_for_sr_only_within_the_threshold():
    assert choose_dtype("auto", scores({"a": 0.02, "b": 0.05}), 0.1)[0] == "int8"
    chosen, reason = choose_dtype("auto", scores({"a": 0.02, "dark": 2.8}), 0.1)
    assert chosen == "fp16" and "2.80 dB on dark" in reason and "0.1 dB threshold" in reason
    assert choose_dtype("int8", scores({"dark": 2.8}), 0.1) == ("int8", "int8 as asked")


def test_auto_keeps_int8_for_an_lcm_part_only_within_the_threshold():
    part = {"fp16": PartScore(0.01, 0.001, 0.0005), "int8": PartScore(0.3, 0.02, 0.015)}
    assert choose_part_dtype("auto", part, 0.02)[0] == "int8"
    chosen, reason = choose_part_dtype("auto", part, 0.01)
    assert chosen == "fp16" and "0.0150 is over the 0.01 threshold" in reason


# Rows as rknn-toolkit2 2.5.0 prints them in its verbose build log (columns trimmed).
BUILD_LOG = """D RKNN: [17:27:51.649]                  Network Layer Information Table
D RKNN: [17:27:51.649] ID   OpType             DataType Target InputShape      OutputShape
D RKNN: [17:27:51.649] 0    InputOperator      FLOAT16  CPU    \\               (1,1,224,224)
D RKNN: [17:27:51.649] 1    ConvRelu           FLOAT16  NPU    (1,1,224,224)   (1,64,224,224)
D RKNN: [17:27:51.649] 4    DepthToSpace       FLOAT16  CPU    (1,9,224,224)   (1,1,672,672)
D RKNN: [17:27:51.649] 5    OutputOperator     FLOAT16  CPU    (1,1,672,672)   \\
D RKNN: [17:27:51.650]                  Feature Tensor Information Table
D RKNN: [17:27:51.650] 4   Gather   /4/Conv_output_0 FLOAT16  CPU
"""


def test_cpu_ops_come_from_the_layer_table_only():
    assert parse_cpu_ops(BUILD_LOG) == ["DepthToSpace"]
    assert parse_cpu_ops("no table here") == []


def test_sidecar_round_trip_and_its_errors(tmp_path):
    rknn = tmp_path / "m.rknn"
    record = BuildRecord("m.onnx", "0" * 64, "rk3588", "int8", ["input"], [[1, 1, 224, 224]], ["output"],
                         calibration="m.calibration/dataset.txt", calibration_samples=16)
    write_sidecar(rknn, record)
    assert sidecar_path(rknn).name == "m.rknn.json"
    assert read_sidecar(rknn) == record
    assert read_sidecar(rknn).dataset_path(sidecar_path(rknn)) == tmp_path / "m.calibration" / "dataset.txt"
    sidecar_path(rknn).write_text('{"dtype": "int4"}')
    with pytest.raises(SidecarError, match="not a valid conversion sidecar"):
        read_sidecar(rknn)
    with pytest.raises(SidecarError, match="was not made by"):
        read_sidecar(tmp_path / "other.rknn")
