"""Schemathesis against a real bridge process (sim runtime, bearer token on)."""

from __future__ import annotations

import json
import shutil

import requests
from hypothesis import strategies as st

from rkllama_bridge.openapi import build_spec

from .fuzzing import fuzz_json_fields, fuzz_server

TOKEN = "fuzz-token"
FAST_SIM = ("--sim-decode-tok-s", "5000", "--sim-prefill-ms-per-token", "0", "--sim-load-s", "0")


def private_store(sim_models_dir, tmp_path):
    """A copy of the sim store: the fuzzer calls the delete routes too, which must not empty the store the
    other tests share."""
    return shutil.copytree(sim_models_dir, tmp_path / "models")


def test_generated_requests_get_no_500_and_match_the_document(start_bridge, image_env, sim_models_dir, tmp_path):
    bridge = start_bridge(*FAST_SIM, token=TOKEN, env=image_env,  # with its image routes under /image
                          models_dir=private_store(sim_models_dir, tmp_path))
    report = fuzz_server(bridge.url, TOKEN)
    print(f"bridge fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])
    assert bridge.get_json("/health")[0] == 200, "the bridge stopped serving"


def test_every_route_but_health_needs_the_token(start_bridge, image_env):
    bridge = start_bridge(*FAST_SIM, token=TOKEN, env=image_env)
    for path, ops in build_spec(images=True)["paths"].items():
        url = bridge.url + path.replace("{name}", "qwen-sim").replace("{fname}", "tokenizer.json")
        for method in ops:
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                r = requests.request(method, url, headers=auth, json={}, timeout=30)
                if path in ("/health", "/health/ready"):
                    assert r.status_code == 200
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
                    assert r.json()["error"]["code"] == "unauthorized"


def test_hostile_json_fields_get_4xx_json_errors(start_bridge, image_env, sim_models_dir, tmp_path):
    bridge = start_bridge(*FAST_SIM, token=TOKEN, env=image_env, models_dir=private_store(sim_models_dir, tmp_path))
    known = {k: st.sampled_from(["qwen-sim", "phi-sim"]) for k in ("model", "model_name")}
    known.update(role=st.sampled_from(["system", "user", "assistant"]), type=st.sampled_from(["text", "image"]))
    known.update(size=st.sampled_from(["64x64", "0x0", "²x64"]), mode=st.sampled_from(["tiny", "nope"]),
                 num_inference_steps=st.integers(1, 3), steps=st.integers(1, 3))
    report = fuzz_json_fields(bridge.url, build_spec(images=True), {"name": "qwen-sim"}, TOKEN, known)
    print(f"bridge JSON fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])


def test_inputs_that_once_gave_500_get_400(start_bridge):
    bridge = start_bridge(*FAST_SIM)
    chat = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    for path, raw in [("/v1/tokenize", b'{"text": "\\ud800"}'),
                      ("/api/chat", b'{"messages": [{"role": "user", "content": "a\\udfff"}]}'),
                      ("/v1/chat/completions", json.dumps({"messages": chat}).encode()),
                      ("/v1/generate", b'{"model": "qwen-sim", "prompt_token_ids": [1], "max_new_tokens": 1'
                       + b"0" * 400 + b"}")]:
        status, body = bridge.post_json(path, raw)
        assert status == 400, (path, status, body)
        assert body["error"]["code"] in ("invalid_json", "invalid_messages", "invalid_parameter")
    status, body = bridge.post_json("/v1/tokenize", {"model": "qwen-sim", "text": "🙂"})  # a real pair is fine
    assert status == 200 and body["count"] > 0
