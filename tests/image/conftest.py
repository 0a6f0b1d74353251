"""Fixtures of the image_engine tests: the packaged SR model, its fake-RKNN twin, and a running server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from image_engine.config import DEFAULT_SR_MODEL
from image_engine.runtimes import load_runtime
from tests.support import ServerProcess

from .imgutil import engine_argv


@pytest.fixture(scope="session")
def sr_model() -> Path:
    """The embedded default model; the tests depend on it being shipped with the package."""
    assert DEFAULT_SR_MODEL.is_file(), f"the packaged SR model is missing: {DEFAULT_SR_MODEL}"
    return DEFAULT_SR_MODEL


@pytest.fixture(scope="session")
def ort_runtime(sr_model):
    runtime = load_runtime(sr_model, "onnxruntime")
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def rknn_model(sr_model, tmp_path_factory) -> Path:
    """``sr.rknn`` next to ``sr.onnx``: what the fake RKNNLite needs to stand in for the NPU."""
    d = tmp_path_factory.mktemp("rknn")
    shutil.copy(sr_model, d / "sr.onnx")
    (d / "sr.rknn").write_bytes(b"RKNN placeholder: the fake runtime reads sr.onnx")
    return d / "sr.rknn"


@pytest.fixture(scope="module")
def sr_server():
    """image-engine serving the default model on onnxruntime, with a 1 MP pixel limit."""
    env = {"SR_NUM_WORKERS": "2", "SR_MAX_PIXELS": "1000000", "SR_REQUEST_TIMEOUT": "60"}
    with ServerProcess(engine_argv(), env=env, startup_timeout=60) as server:
        yield server
