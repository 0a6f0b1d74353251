"""Schemathesis against a real ``exo-rk serve`` gateway in front of a sim bridge."""

from __future__ import annotations

import sys

import pytest
import requests
from hypothesis import strategies as st

from exo_rk.openapi import build_spec
from rkllama_bridge.config import image_env_for_bridge
from tests.support import ServerProcess

from .conftest import FAST_SIM
from .fuzzing import fuzz_json_fields, fuzz_server

TOKEN = "gateway-fuzz-token"


@pytest.fixture(scope="module")
def gateway(sim_models_dir, tiny_modes, tmp_path_factory):
    from tests.support import bridge_argv

    image_env = image_env_for_bridge({"MODES_PATH": str(tiny_modes), "NUM_WORKERS": "1", "SR_NUM_WORKERS": "1",
                                      "OUTPUTS_DIR": str(tmp_path_factory.mktemp("gw-outputs"))})  # its /image
    with ServerProcess(bridge_argv(sim_models_dir, "sim", *FAST_SIM), env=image_env) as bridge:
        argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url,
                "--default-model", "qwen-sim", "--api-token", TOKEN]
        env = {"EXO_HOME": str(tmp_path_factory.mktemp("exo-home")), "RKLLM_SERVERS": ""}
        with ServerProcess(argv, env=env, token=TOKEN, startup_timeout=60) as server:
            yield server


def test_generated_requests_get_no_500_and_match_the_document(gateway):
    report = fuzz_server(gateway.url, TOKEN)
    print(f"gateway fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])


def test_hostile_json_fields_get_4xx_json_errors(gateway):
    known = {"model": st.sampled_from(["qwen-sim", "phi-sim", "missing"]),
             "role": st.sampled_from(["system", "user", "assistant"]), "type": st.just("text"),
             "size": st.sampled_from(["64x64", "0x0", "512x512"]), "num_inference_steps": st.integers(1, 3)}
    report = fuzz_json_fields(gateway.url, build_spec(), {}, TOKEN, known)
    print(f"gateway JSON fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])


def test_every_route_but_health_needs_the_token_and_errors_are_json(gateway):
    for path, ops in build_spec()["paths"].items():
        for method in ops:
            r = requests.request(method, gateway.url + path, json={}, timeout=30)
            open_route = path in ("/health", "/health/ready")
            assert r.status_code == (200 if open_route else 401), (method, path, r.status_code)
    r = requests.get(gateway.url + "/nowhere", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    big = b'{"messages": "' + b"x" * (9 * 2**20) + b'"}'
    r = requests.post(gateway.url + "/v1/chat/completions", data=big, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["message"]


def test_inputs_that_once_gave_500_get_400(gateway):
    raw = b'{"messages": [{"role": "user", "content": "a\\udfffb"}]}'
    status, body = gateway.post_json("/v1/chat/completions", raw)
    assert status == 400 and body["error"]["code"] == "invalid_json", body  # as the bridge answers it
    status, body = gateway.post_json("/v1/images/generations", b'{"prompt": "\\ud800"}')
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    # refused by the image server behind the bridge (its model makes 64x64 only): a 400, not a 502
    status, body = gateway.post_json("/v1/images/generations", {"prompt": "x", "size": "5x77"})
    assert status == 400 and "5x77" in body["error"]["message"], body
