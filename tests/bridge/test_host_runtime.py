"""The host runtime on the embedded default model: real answers from SmolLM2-135M-Instruct, offline.
One host bridge serves the module (loading torch and the model is most of each test's cost)."""

import json

import pytest
import requests

from ..support import ServerProcess, bridge_argv, wait_for


@pytest.fixture(scope="module")
def host_bridge(default_model_dir):
    with ServerProcess(bridge_argv(default_model_dir.parent, "host")) as bridge:
        yield bridge


def test_default_model_answers_a_real_question(host_bridge):
    b = host_bridge
    r = requests.post(b.url + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_host_stream_is_token_by_token_and_abort_frees_the_model(host_bridge):
    b = host_bridge
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, timeout=30, what="host handle idle")
    aborts = b.get_json("/health")[1]["aborts_total"]
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_new_tokens": 400, "temperature": 0}
    with requests.post(b.url + "/v1/generate", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        first, second = json.loads(next(lines)), json.loads(next(lines))
        assert isinstance(first["token_id"], int) and isinstance(second["token_id"], int)
    wait_for(lambda: b.get_json("/health")[1]["aborts_total"] == aborts + 1, timeout=10, what="host generation aborted")
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, timeout=10, what="host handle free")


@pytest.mark.slow
def test_host_embeddings_are_the_models_mean_pooled_last_hidden_layer(host_bridge, default_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from rkllama_bridge.tokenizer import ChatTokenizer

    b = host_bridge
    texts = ["The river flows to the sea.", "Compilers translate code."]
    r = requests.post(b.url + "/api/embed", json={"model": "smollm2-135m-instruct", "input": texts}, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()["embeddings"]
    model = AutoModelForCausalLM.from_pretrained(default_model_dir / "hf", dtype=torch.float32)
    tokenizer = ChatTokenizer(default_model_dir)
    assert r.json()["prompt_eval_count"] == sum(len(tokenizer.encode(t)) for t in texts)
    for text, vector in zip(texts, got, strict=True):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([tokenizer.encode(text)]), output_hidden_states=True)
        expected = out.hidden_states[-1][0].mean(dim=0)
        assert len(vector) == model.config.hidden_size
        assert torch.allclose(torch.tensor(vector), expected, atol=1e-4)
    shown = requests.post(b.url + "/api/show", json={"model": "smollm2-135m-instruct"}, timeout=30).json()
    assert shown["model_info"]["llama.embedding_length"] == model.config.hidden_size
