"""The official ``openai`` client, as a real peer, chats with ``exo-rk serve`` in front of a sim bridge."""

from __future__ import annotations

import sys

import numpy as np
import openai
import pytest

from tests.exo_rk.bridges import SIM_MODEL
from tests.support import ServerProcess

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def gateway(sim_bridge, tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-exo-home")
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", sim_bridge.url]
    with ServerProcess(argv, env={"EXO_HOME": str(home), "RKLLM_SERVERS": ""}, startup_timeout=60) as server:
        yield server


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_models_lists_the_bridge_models(client):
    ids = [m.id for m in client.models.list().data]
    assert SIM_MODEL in ids


def test_chat_without_stream_reports_usage_and_length(client, sim_bridge):
    reply = client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=5, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert reply.usage.completion_tokens == 5
    status, ids = sim_bridge.post_json("/v1/tokenize", {"model": SIM_MODEL, "messages": MESSAGES})
    assert status == 200 and reply.usage.prompt_tokens == len(ids["token_ids"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_stream_gives_the_same_text_as_one_response(client):
    whole = client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=SIM_MODEL,
            messages=MESSAGES,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].finish_reason == "stop"
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_sequence_cuts_the_text_and_ends_the_request(client):
    full = (
        client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, temperature=0)
        .choices[0]
        .message.content
    )
    words = full.split()
    stop = words[len(words) // 2]
    for stream in (False, True):
        if stream:
            chunks = client.chat.completions.create(
                model=SIM_MODEL, messages=MESSAGES, stop=[stop], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            reply = client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, stop=stop)
            assert reply.choices[0].finish_reason == "stop"
            text = reply.choices[0].message.content
        assert text == full[: full.index(stop)]


def test_bad_requests_get_clear_errors_and_the_gateway_keeps_serving(client):
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=SIM_MODEL, messages=[])
    assert client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=1).choices[0].message


def _aborts(bridge, model: str) -> float:
    from tests.pool.runs import metric

    return metric(bridge.request("GET", "/metrics")[2].decode(), "bridge_aborts_total", model=model)


def test_early_stops_free_the_board(client, sim_bridge):
    """A stop sequence aborts the bridge's generation at once (counted in bridge_aborts_total); max_tokens
    reaches the bridge as its own limit, so it stops there without an abort."""
    from tests.exo_rk.bridges import LONG_SIM_MODEL
    from tests.support import wait_for

    def busy() -> int:
        return sum(m.get("busy", 0) for m in sim_bridge.get_json("/health")[1]["models"] if m["name"] == LONG_SIM_MODEL)

    start = client.chat.completions.create(model=LONG_SIM_MODEL, messages=MESSAGES, max_tokens=12)
    assert start.choices[0].finish_reason == "length" and start.usage.completion_tokens == 12
    assert [r for r in sim_bridge.recorded() if r["model"] == LONG_SIM_MODEL][-1]["params"]["max_new_tokens"] == 12
    stop = start.choices[0].message.content.split()[2]
    before = _aborts(sim_bridge, LONG_SIM_MODEL)
    reply = client.chat.completions.create(model=LONG_SIM_MODEL, messages=MESSAGES, stop=[stop])
    assert reply.choices[0].finish_reason == "stop"  # 4000 tokens at 200 tok/s would take 20 s
    wait_for(lambda: _aborts(sim_bridge, LONG_SIM_MODEL) == before + 1, timeout=10, what="the abort to count")
    wait_for(lambda: busy() == 0, timeout=10, what="the handle to be free")


def test_text_completions_whole_and_streamed_with_usage(client):
    whole = client.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=5,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_embeddings_through_the_gateway_are_the_bridge_vectors(client, gateway, sim_bridge):
    texts = ["Rockchip boards", "run small models"]
    status, direct = sim_bridge.post_json("/v1/embeddings", {"model": SIM_MODEL, "input": texts})
    assert status == 200
    packed = client.embeddings.create(model=SIM_MODEL, input=texts)  # the client asks for base64 itself
    plain = client.embeddings.create(model=SIM_MODEL, input=texts[0], encoding_format="float")
    for got, want in zip(packed.data, direct["data"], strict=True):
        assert got.index == want["index"]
        assert np.allclose(got.embedding, want["embedding"], rtol=1e-6, atol=1e-7)  # float32 on the wire
    assert plain.data[0].embedding == direct["data"][0]["embedding"]
    assert packed.usage.prompt_tokens == direct["usage"]["prompt_tokens"] > plain.usage.prompt_tokens > 0
    assert packed.model == SIM_MODEL


@pytest.mark.parametrize("body,param", [({"input": ""}, "input"), ({"input": []}, "input"),
                                        ({"input": [1, 2, 3]}, "input"), ({"input": ["a", 7]}, "input"),
                                        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
                                        ({"input": "a", "dimensions": 8}, "dimensions")])
def test_bad_embedding_requests_get_a_400_naming_the_field(gateway, body, param):
    status, answer = gateway.post_json("/v1/embeddings", {"model": SIM_MODEL, **body})
    assert status == 400 and answer["error"]["param"] == param and answer["error"]["message"]


def test_embeddings_of_an_unknown_model_are_a_404(client):
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.embeddings.create(model="no-such-model", input="x")
