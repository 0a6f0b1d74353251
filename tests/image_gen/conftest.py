"""Fixtures for the LCM tests: a tiny random LCM model set written once per session."""

import pytest

from image_engine.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 64x64 tiny LCM model directory (ONNX plus model.rknn placeholders for the fake RKNNLite)."""
    return write_tiny_model(tmp_path_factory.mktemp("lcm") / "tiny-lcm", rknn_placeholders=True)

