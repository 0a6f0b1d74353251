"""The host runtime on the embedded default model: real answers from SmolLM2-135M-Instruct, offline."""

import json

import requests

from ..support import wait_for


def test_default_model_answers_a_real_question(start_bridge, default_model_dir):
    b = start_bridge(models_dir=default_model_dir.parent, runtime="host")
    r = requests.post(b.url + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_host_stream_is_token_by_token_and_abort_frees_the_model(start_bridge, default_model_dir):
    b = start_bridge(models_dir=default_model_dir.parent, runtime="host")
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_new_tokens": 400, "temperature": 0}
    with requests.post(b.url + "/v1/generate", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        first, second = json.loads(next(lines)), json.loads(next(lines))
        assert isinstance(first["token_id"], int) and isinstance(second["token_id"], int)
    wait_for(lambda: b.get_json("/health")[1]["aborts_total"] == 1, timeout=10, what="host generation aborted")
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, timeout=10, what="host handle free")
