"""Real bridge processes for the exo_rk tests: the sim runtime on a small model store, and the host
runtime on the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.exo_rk.bridges import (
    LONG_SIM_MODEL,
    SIM_MODEL,
    RecordingBridge,
    make_sim_model,
    sim_bridge_process,
)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The converted default model (converted once, then cached by the bridge package)."""
    from rkllama_bridge.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def sim_store(tmp_path_factory, smol_dir) -> Path:
    """``qwen-sim`` (48-token reply) and ``long-sim`` (4000 tokens: 20 s at the test speed), both with
    SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("sim-models")
    make_sim_model(root, SIM_MODEL, smol_dir, 48, 256)
    make_sim_model(root, LONG_SIM_MODEL, smol_dir, 4000, 4000)
    return root


@pytest.fixture(scope="session")
def sim_bridge(sim_store, tmp_path_factory):
    with sim_bridge_process(sim_store, tmp_path_factory.mktemp("sim-bridge")) as bridge:
        yield bridge


@pytest.fixture(scope="session")
def host_bridge(smol_dir, tmp_path_factory):
    """The host runtime serving the embedded default model (real answers, ~10 tok/s here)."""
    argv = [sys.executable, "-m", "rkllama_bridge", "serve", "--runtime", "host", "--host", "127.0.0.1"]
    with RecordingBridge(
        argv, tmp_path_factory.mktemp("host-bridge") / "prompts.jsonl", startup_timeout=180
    ) as bridge:
        yield bridge
        bridge.kill()  # nothing to wind down gracefully here; saves the bridge's drain time


@pytest.fixture
def exo_home(tmp_path) -> Path:
    return tmp_path / "exo-home"
