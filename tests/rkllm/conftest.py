"""Fixtures for the rkllm runtime tests: stub libraries per ABI, stand-in model files, model specs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from rkllama_bridge.rkllm import ABI_NAMES
from rkllama_bridge.rkllm.runtime import RKLLMRuntime
from rkllama_bridge.runtimes.base import ModelSpec

from ..native.build import build_stub, stub_env, write_stub_model

EOS = 2
STUB_ENV_KEYS = ("RKLLM_LIB", "RKLLM_ABI", "RKLLM_STUB_REPLY_IDS", "RKLLM_STUB_DELAY_MS", "RKLLM_STUB_ERROR_AFTER",
                 "RKLLM_STUB_RECORD", "RKLLM_STUB_INIT_FAIL", "RKLLM_STUB_EMBED_DIM")


def pytest_collection_modifyitems(items):
    if shutil.which("gcc") is None:
        skip = pytest.mark.skip(reason="gcc is needed to build the stub librkllmrt")
        for item in items:
            if "tests/rkllm/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(params=ABI_NAMES)
def abi(request) -> str:
    """Every supported RKLLM ABI in turn."""
    return request.param


@pytest.fixture
def clean_env(monkeypatch):
    """No RKLLM_* variable leaks in from the caller's environment."""
    for key in STUB_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def rkllm_stub_env() -> Callable[..., dict]:
    """``stub_env(abi, reply_ids=None, **opts)``: the env a bridge subprocess needs to run on the stub."""
    return stub_env


@pytest.fixture
def stub_model(tmp_path) -> Callable[..., ModelSpec]:
    """Make a model spec backed by a stand-in .rkllm file (toolkit version in its header)."""

    def make(name: str = "m", toolkit_version: str | None = None, num_ctx: int = 4096,
             eos: list[int] = (EOS,), **options: str) -> ModelSpec:
        directory = tmp_path / name
        path = directory / f"{name}.rkllm"
        if toolkit_version is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stand-in weights without a version\n")
        else:
            write_stub_model(path, toolkit_version)
        return ModelSpec(name=name, directory=directory, weights=path, num_ctx=num_ctx, eos_token_ids=list(eos),
                         vocab_size=32000, options={k.upper(): str(v) for k, v in options.items()})

    return make


@pytest.fixture
def stub_runtime(clean_env) -> Callable[..., RKLLMRuntime]:
    """``stub_runtime(abi, reply_ids=None, **opts)``: set the stub's env and return an RKLLMRuntime on it."""

    def make(abi_name: str, reply_ids=None, **opts) -> RKLLMRuntime:
        for key, value in stub_env(abi_name, reply_ids, **opts).items():
            clean_env.setenv(key, value)
        return RKLLMRuntime()

    return make


def read_records(path: Path) -> list[dict]:
    """The JSONL lines the stub appended (one per rkllm_run / clear_kv_cache / destroy)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def built_stub() -> Callable[[str], Path]:
    return build_stub
