"""Embeddings on the rkllm runtime: a RKLLM_INFER_GET_LAST_HIDDEN_LAYER run of the prompt on every ABI's
stub, mean-pooled by the bridge, and the bridge's embedding routes on a ``--runtime rkllm`` process."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from rkllama_bridge.runtimes.base import GenerationFailed, GenerationParams

from ..conftest import SIM_MODEL
from ..native.build import stub_env
from .conftest import read_records

REPLY = [501, 502, 503]
DIM = 6


def stub_hidden_states(ids: list[int], dim: int) -> np.ndarray:
    """The stub's hidden layer of a prompt, by the formula its header documents."""
    return np.array([[np.float32((i * 31 + (t + 1) * 17 + j * 7) % 101) / np.float32(101) - np.float32(0.5)
                      for j in range(dim)] for t, i in enumerate(ids)], dtype=np.float32)


def expected_embedding(ids: list[int], dim: int) -> np.ndarray:
    return stub_hidden_states(ids, dim).astype(np.float64).mean(axis=0)


def test_the_hidden_layer_is_mean_pooled_on_every_abi(abi, stub_runtime, stub_model, tmp_path):
    record = tmp_path / "runs.jsonl"
    handle = stub_runtime(abi, REPLY, record=record, embed_dim=DIM).load(stub_model())
    ids = [5, 9, 300, 7, 12000]
    vector = handle.embed(ids)
    other = handle.embed(ids[:-1])
    tokens = []
    handle.generate([1, 2], GenerationParams(max_new_tokens=10), tokens.append)
    handle.close()
    assert len(vector) == DIM and handle.embedding_dim == DIM
    assert np.allclose(vector, expected_embedding(ids, DIM), rtol=0, atol=1e-6)
    assert np.allclose(other, expected_embedding(ids[:-1], DIM), rtol=0, atol=1e-6)
    assert not np.allclose(vector, other)
    assert tokens == REPLY  # the hidden-layer runs generated nothing the next generation sees
    records = read_records(record)
    runs = [r for r in records if r["event"] == "run"]
    layers = [r for r in records if r["event"] == "hidden_layer"]
    assert [(r["num_tokens"], r["embd_size"]) for r in layers] == [(5, DIM), (4, DIM)]
    assert {r["callback_returned"] for r in layers} == {2 if abi == "1.3" else 0}  # 1.3 releases the buffer
    assert [r["mode"] for r in runs] == [1, 1, 0]
    assert runs[0]["token_ids"] == ids and runs[0]["input_type"] == "token"
    assert runs[0]["keep_history"] == (None if abi == "1.1" else 0)


def test_an_empty_prompt_is_refused_before_the_library(stub_runtime, stub_model):
    handle = stub_runtime("1.3", REPLY).load(stub_model())
    with pytest.raises(GenerationFailed, match="no tokens"):
        handle.embed([])
    handle.close()


@pytest.fixture(scope="module")
def rkllm_bridge(sim_models_dir):
    from ..support import ServerProcess, bridge_argv

    with ServerProcess(bridge_argv(sim_models_dir, "rkllm"), env=stub_env("1.2.1", REPLY, embed_dim=DIM)) as bridge:
        yield bridge


def _ids(bridge, text: str) -> list[int]:
    status, body = bridge.post_json("/v1/tokenize", {"model": SIM_MODEL, "text": text})
    assert status == 200
    return body["token_ids"]


def test_the_embedding_routes_answer_the_stub_hidden_states(rkllm_bridge):
    texts = ["The quick brown fox", "jumps"]
    url = rkllm_bridge.url
    ollama = requests.post(url + "/api/embed", json={"model": SIM_MODEL, "input": texts}, timeout=60)
    older = requests.post(url + "/api/embeddings", json={"model": SIM_MODEL, "prompt": texts[1]}, timeout=60)
    openai = requests.post(url + "/v1/embeddings", json={"model": SIM_MODEL, "input": texts[0]}, timeout=60)
    assert ollama.status_code == older.status_code == openai.status_code == 200
    ids = [_ids(rkllm_bridge, t) for t in texts]
    expected = [expected_embedding(i, DIM) for i in ids]
    got = ollama.json()["embeddings"]
    assert len(got) == 2 and all(np.allclose(g, e, atol=1e-6) for g, e in zip(got, expected, strict=True))
    assert ollama.json()["prompt_eval_count"] == len(ids[0]) + len(ids[1])
    assert np.allclose(older.json()["embedding"], expected[1], atol=1e-6)
    data = openai.json()
    assert np.allclose(data["data"][0]["embedding"], expected[0], atol=1e-6)
    assert data["usage"]["prompt_tokens"] == len(ids[0])
    show = requests.post(url + "/api/show", json={"model": SIM_MODEL}, timeout=60).json()
    lengths = [v for k, v in show["model_info"].items() if k.endswith(".embedding_length")]
    assert lengths == [DIM]  # the hidden size the library reported, not a configured guess


@pytest.mark.parametrize("route,body", [("/api/embed", {"input": ""}), ("/v1/embeddings", {"input": []}),
                                        ("/api/embeddings", {"prompt": ""}), ("/v1/embeddings", {"input": [""]})])
def test_empty_input_is_a_clear_4xx(rkllm_bridge, route, body):
    r = requests.post(rkllm_bridge.url + route, json={"model": SIM_MODEL, **body}, timeout=60)
    assert 400 <= r.status_code < 500
    error = r.json()["error"]
    assert error["code"] and error["message"]
