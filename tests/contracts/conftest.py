"""Servers for the contract tests: an image service on a tiny LCM model, a gateway over a sim bridge."""

from __future__ import annotations

import sys

import pytest

from image_engine.tiny_model import write_tiny_model
from rkllama_bridge.config import image_env_for_bridge
from tests.support import ServerProcess

IMAGE_TOKEN = "image-fuzz-token"
FAST_SIM = ("--sim-decode-tok-s", "5000", "--sim-prefill-ms-per-token", "0", "--sim-load-s", "0")


def image_argv(*extra: str) -> list:
    return [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1", *extra]


@pytest.fixture(scope="session")
def tiny_modes(tmp_path_factory):
    """A modes file with one 64x64 tiny LCM mode (2 steps by default)."""
    root = tmp_path_factory.mktemp("contract-lcm")
    model = write_tiny_model(root / "tiny", 64, 64, seed=7)
    modes = root / "modes.yaml"
    modes.write_text(f"default_mode: tiny\nmodes:\n  tiny:\n    model: {model}\n    default_size: \"64x64\"\n"
                     f"    default_steps: 2\n    default_guidance: 1.0\n")
    return modes


@pytest.fixture(scope="module")
def image_server(tiny_modes, tmp_path_factory):
    env = {"MODES_PATH": str(tiny_modes), "NUM_WORKERS": "1", "QUEUE_MAX": "4", "SR_NUM_WORKERS": "1",
           "OUTPUTS_DIR": str(tmp_path_factory.mktemp("outputs")), "SR_MAX_PIXELS": "200000",
           "IMAGE_ENGINE_TOKEN": IMAGE_TOKEN}
    with ServerProcess(image_argv(), env=env, token=IMAGE_TOKEN) as server:
        yield server


@pytest.fixture
def image_env(tiny_modes, tmp_path) -> dict:
    """Environment that makes a bridge's mounted image routes serve the tiny LCM model."""
    return image_env_for_bridge({"MODES_PATH": str(tiny_modes), "NUM_WORKERS": "1", "QUEUE_MAX": "4",
                                 "SR_NUM_WORKERS": "1", "OUTPUTS_DIR": str(tmp_path / "outputs"),
                                 "SR_MAX_PIXELS": "200000"})
