"""What the bridge does with request parameters it cannot honour, and the native probe that must not load.

RKLLM 1.1 and 1.2 fix temperature, top_k, top_p and the penalties at ``rkllm_init`` (from the Modelfile);
1.3 takes them per run; no release seeds. The bridge says which ones it ignored (``X-Ignored-Params``, and
``warnings`` on the native stream's last line), refuses a seed, and lists what it honours in
``/v1/models/<name>``.
"""

from __future__ import annotations

import json

import pytest
import requests

from ..conftest import SIM_MODEL, write_sim_model
from .runtimes import RUNTIMES

CHAT = [{"role": "user", "content": "Hello there"}]
needs_stub = pytest.mark.skipif("rkllm" not in RUNTIMES, reason="no gcc: the librkllmrt stub cannot be built")


def _rkllm_bridge(start_bridge, abi: str):
    from ..native.build import stub_env

    return start_bridge(runtime="rkllm", env=stub_env(abi, reply_ids=[42, 43, 44]))


def _native(url: str, body: dict):
    r = requests.post(url + "/v1/generate", json=body, timeout=60)
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return r, lines


@needs_stub
def test_rkllm_1_2_reports_the_sampling_it_ignores(start_bridge):
    bridge = _rkllm_bridge(start_bridge, "1.2.0")
    r, lines = _native(bridge.url, {"model": SIM_MODEL, "messages": CHAT, "temperature": 0, "top_p": 0.5,
                                    "max_new_tokens": 2})
    assert r.status_code == 200
    assert r.headers["X-Ignored-Params"] == "temperature,top_p"
    assert [w.split()[0] for w in lines[-1]["warnings"]] == ["temperature", "top_p"]
    chat = requests.post(bridge.url + "/v1/chat/completions", timeout=60,
                         json={"model": SIM_MODEL, "messages": CHAT, "temperature": 0.2, "max_tokens": 2})
    assert chat.status_code == 200 and chat.headers["X-Ignored-Params"] == "temperature"
    status, info = bridge.get_json(f"/v1/models/{SIM_MODEL}")
    assert status == 200 and info["capabilities"]["per_request_params"] == []


@needs_stub
def test_a_seed_no_rkllm_release_can_honour_is_refused(start_bridge):
    bridge = _rkllm_bridge(start_bridge, "1.3")
    r, lines = _native(bridge.url, {"model": SIM_MODEL, "messages": CHAT, "seed": 42})
    assert r.status_code == 400 and lines[0]["error"]["code"] == "unsupported_parameter"
    assert "seed" in lines[0]["error"]["message"]
    r, lines = _native(bridge.url, {"model": SIM_MODEL, "messages": CHAT, "temperature": 0, "max_new_tokens": 2})
    assert r.status_code == 200 and "X-Ignored-Params" not in r.headers and "warnings" not in lines[-1]
    status, info = bridge.get_json(f"/v1/models/{SIM_MODEL}")
    assert "temperature" in info["capabilities"]["per_request_params"]
    assert "seed" not in info["capabilities"]["per_request_params"]


def test_the_native_probe_is_refused_before_any_model_loads(start_bridge, tmp_path, default_model_dir):
    """exo's engine probes ``POST /v1/generate {}``: a 400 without loading (or evicting) anything, even where
    the body's missing model resolves to the store's only one."""
    write_sim_model(tmp_path, SIM_MODEL, default_model_dir)
    bridge = start_bridge("--sim-profile", "instant", "--no-restore", models_dir=tmp_path)
    r, lines = _native(bridge.url, {})
    assert r.status_code == 400 and lines[0]["error"]["code"] == "invalid_prompt"
    status, ps = bridge.get_json("/api/ps")
    assert status == 200 and ps["models"] == []
    r, _ = _native(bridge.url, {"model": SIM_MODEL, "prompt_token_ids": "not a list"})
    assert r.status_code == 400
    assert bridge.get_json("/api/ps")[1]["models"] == []
