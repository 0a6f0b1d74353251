"""The bridge as a drop-in for rkllama's and Ollama's servers: the official ``ollama`` and ``openai`` clients
and the requests rkllama's own client sends, against one sim bridge on a private model store (the delete
routes remove models from it)."""

from __future__ import annotations

import json
import shutil

import ollama
import openai
import pytest
import requests

from ..conftest import SIM_MODEL, SIM_MODEL_2
from ..support import ServerProcess, bridge_argv

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def bridge(sim_models_dir, tmp_path_factory):
    store = shutil.copytree(sim_models_dir, tmp_path_factory.mktemp("dropin") / "models")
    shutil.copytree(store / SIM_MODEL_2, store / "doomed")
    shutil.copytree(store / SIM_MODEL_2, store / "doomed-too")
    (store / SIM_MODEL / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576}))
    argv = bridge_argv(store, "sim", "--sim-profile", "instant", "--no-restore")
    with ServerProcess(argv, startup_timeout=60) as server:
        server.store = store
        yield server


def test_the_ollama_client_lists_shows_chats_generates_and_sees_ps(bridge):
    client = ollama.Client(host=bridge.url)
    assert SIM_MODEL in [m.model for m in client.list().models]
    shown = client.show(SIM_MODEL)
    assert shown.modelinfo["general.architecture"] and "FROM" in shown.modelfile
    assert shown.modelinfo["llama.context_length"] > 0
    assert shown.modelinfo["llama.embedding_length"] == 576  # the model's config.json
    reply = client.chat(model=SIM_MODEL, messages=CHAT, options={"num_predict": 6})
    assert reply.message.content and reply.eval_count == 6 and reply.done
    generated = client.generate(model=SIM_MODEL, prompt="Hi", options={"num_predict": 4})
    assert generated.response and generated.eval_count == 4
    running = {m.model: m for m in client.ps().models}
    assert SIM_MODEL in running
    entry = running[SIM_MODEL]
    assert entry.size is not None and entry.expires_at is not None and entry.size_vram is not None


def test_the_ollama_client_deletes_and_an_unknown_model_is_404(bridge):
    client = ollama.Client(host=bridge.url)
    assert client.delete("doomed").status == "success"
    assert "doomed" not in [m.model for m in client.list().models]
    assert not (bridge.store / "doomed").exists()
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("doomed")
    assert err.value.status_code == 404


def test_rkllama_clients_get_their_routes(bridge):
    url = bridge.url
    body = {"model": SIM_MODEL, "messages": CHAT[1:], "max_new_tokens": 5}
    whole = requests.post(url + "/generate", json={**body, "stream": False}, timeout=30).json()
    assert whole["usage"]["completion_tokens"] == 5 and whole["usage"]["tokens_per_second"] > 0
    chunks = [json.loads(c) for c in requests.post(url + "/generate", json={**body, "stream": True},
                                                    timeout=30).text.split("\n\n") if c.strip()]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # max_new_tokens reached
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["tokens_per_second"] > 0
    current = requests.get(url + "/current_models", timeout=10).json()["models"]
    assert SIM_MODEL in [m["name"] for m in current] and all("loaded_at" in m and "last_call" in m for m in current)
    # rkllama's `rm`: 404 for an unknown model, 200 and gone for a known one
    assert requests.delete(url + "/rm", json={"model": "nope"}, timeout=10).status_code == 404
    gone = requests.delete(url + "/rm", json={"model": "doomed-too"}, timeout=10)
    assert gone.status_code == 200 and "deleted" in gone.json()["message"]
    assert "doomed-too" not in requests.get(url + "/models", timeout=10).json()["models"]
    for path in ("/pull", "/api/pull"):
        pulled = requests.post(url + path, json={"model": "qwen:0.5b"}, timeout=10)
        assert pulled.status_code == 501
        assert pulled.json()["error"]["code"] == "pull_not_supported"
        assert "models directory" in pulled.json()["error"]["message"]
    assert requests.post(url + "/unload_models", timeout=10).status_code == 200
    assert requests.get(url + "/current_models", timeout=10).json()["models"] == []


def test_the_openai_client_completes_chats_with_usage_and_retrieves_a_model(bridge):
    with openai.OpenAI(base_url=bridge.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        done = client.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=5)
        assert done.object == "text_completion" and done.choices[0].text and done.usage.completion_tokens == 5
        assert done.choices[0].finish_reason == "length"
        streamed = list(client.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=5,
                                                  stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
        assert streamed[-1].usage.completion_tokens == 5
        chunks = list(client.chat.completions.create(model=SIM_MODEL, messages=CHAT, max_tokens=4, stream=True,
                                                     stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and usage.completion_tokens == 4
        assert usage.model_extra["tokens_per_second"] > 0  # what rkllama's client prints with --verbose
        model = client.models.retrieve(SIM_MODEL)
        assert model.id == SIM_MODEL and model.owned_by == "rkllama-bridge" and model.created > 0


def test_embeddings_through_the_ollama_and_openai_clients(bridge):
    client = ollama.Client(host=bridge.url)
    dim = client.show(SIM_MODEL).modelinfo["llama.embedding_length"]
    both = client.embed(model=SIM_MODEL, input=["a river", "a mountain"]).embeddings
    assert [len(v) for v in both] == [dim, dim] and both[0] != both[1]
    assert client.embed(model=SIM_MODEL, input="a river").embeddings[0] == both[0]  # deterministic
    assert client.embeddings(model=SIM_MODEL, prompt="a river").embedding == both[0]
    with openai.OpenAI(base_url=bridge.url + "/v1", api_key="unused", max_retries=0, timeout=60) as oa:
        reply = oa.embeddings.create(model=SIM_MODEL, input=["a river", "a mountain"])
    for got, expected in zip([d.embedding for d in reply.data], both, strict=True):
        assert got == pytest.approx(expected)
    assert reply.usage.prompt_tokens > 0
    bad = requests.post(bridge.url + "/api/embed", json={"model": SIM_MODEL, "input": []}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
