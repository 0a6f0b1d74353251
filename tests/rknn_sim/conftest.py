"""The simulator tier: Rockchip's rknn-toolkit2 converts the models once per session and its PC simulator runs
them behind the service's own RKNN code path. These tests run only where rknn-toolkit2 is importable
(.venv-rknn); the main run starts them there (tests/test_rknn_sim_tier.py) and reports each one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from image_engine.config import DEFAULT_SR_MODEL

if importlib.util.find_spec("rknn") is None:
    # Not an error here: the main venv has no rknn-toolkit2; tests/test_rknn_sim_tier.py runs this tier.
    collect_ignore_glob = ["test_*.py"]

SIM_ENV = {"IMAGE_ENGINE_RKNN_SIM": "1"}


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``image-engine convert ...`` as a user runs it (a real subprocess); fails the test on a non-zero exit."""
    result = subprocess.run([sys.executable, "-m", "image_engine", "convert", *args], cwd=str(cwd),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"convert {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def sr_conversions(tmp_path_factory) -> dict[str, Path]:
    """The shipped ESPCN converted for 224-px tiles, fp16 and int8 (in-process: the same code as the CLI)."""
    from image_engine.convert_common import ConvertOptions
    from image_engine.convert_sr import convert_sr

    root = tmp_path_factory.mktemp("sr-rknn")
    built = {}
    for dtype in ("fp16", "int8"):
        report = convert_sr(DEFAULT_SR_MODEL, ConvertOptions(dtype=dtype, progress=lambda _line: None),
                            root / dtype)
        built[dtype] = report.rknn_path
    return built


@pytest.fixture(scope="session")
def tiny_lcm(tmp_path_factory) -> Path:
    from image_engine.tiny_model import write_tiny_model

    """96x64, not square: a latent passed as NCHW where NHWC is due cannot go unnoticed."""
    return write_tiny_model(tmp_path_factory.mktemp("lcm-src") / "tiny-lcm", 96, 64, seed=7)


@pytest.fixture(scope="session")
def lcm_conversion(tiny_lcm, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``image-engine convert tiny-lcm --dtype fp16`` end to end: (output dir, the finished process)."""
    work = tmp_path_factory.mktemp("lcm-convert")
    out = work / "tiny-lcm-rk3588-fp16"
    result = convert(str(tiny_lcm), "--target", "rk3588", "--dtype", "fp16", "--size", "96x64", cwd=work)
    return out, result



def pytest_configure(config: pytest.Config) -> None:
    # rknn-toolkit2 2.5.0 calls onnx.mapping, deprecated in onnx 1.15+: hundreds of lines per build otherwise
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:rknn.*")
    config.addinivalue_line("filterwarnings", "ignore:pkg_resources is deprecated:UserWarning")
