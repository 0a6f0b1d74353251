"""Fixtures for the LCM tests: a tiny random LCM model set written once per session."""

import pytest

from image_engine.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 64x64 tiny LCM model directory (ONNX plus model.rknn placeholders for the fake RKNNLite)."""
    return write_tiny_model(tmp_path_factory.mktemp("lcm") / "tiny-lcm", rknn_placeholders=True)


@pytest.fixture(scope="session")
def tiny_model_wide(tmp_path_factory):
    """A non-square (96x64) tiny model, so NCHW and NHWC shapes cannot be confused."""
    return write_tiny_model(tmp_path_factory.mktemp("lcm") / "tiny-wide", width=96, height=64, seed=1,
                            rknn_placeholders=True)
