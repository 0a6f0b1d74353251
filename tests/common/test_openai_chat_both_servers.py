"""The bridge's and the gateway's ``/v1/chat/completions`` are one implementation (rk_common.openai_chat):
the same requests to both, through the official ``openai`` client, get the same answers where they once
differed (stop list limit, finish reason of a reply cut by a deadline, ``system_fingerprint`` and
``logprobs``, OpenAI-typed errors), and both servers tag every answer with a request id."""

from __future__ import annotations

import sys

import openai
import pytest
import requests

from tests.conftest import SIM_MODEL
from tests.exo_rk.bridges import RecordingBridge
from tests.support import ServerProcess, bridge_argv

# 10 tok/s and a 2 s deadline: a 60-token reply needs 6 s of decode and is always cut; a 2-token one
# needs 0.2 s and never is.
DEADLINE_ARGS = ("--sim-profile", "instant", "--sim-decode-tok-s", "10", "--request-timeout", "2")
HELLO = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def bridge(sim_models_dir, tmp_path_factory):
    record = tmp_path_factory.mktemp("chat-both") / "prompts.jsonl"
    with RecordingBridge(bridge_argv(sim_models_dir, "sim", *DEADLINE_ARGS), record) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(bridge, tmp_path_factory):
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url]
    env = {"EXO_HOME": str(tmp_path_factory.mktemp("exo-home")), "RKLLM_SERVERS": ""}
    with ServerProcess(argv, env=env, startup_timeout=60) as server:
        yield server


@pytest.fixture(params=["bridge", "gateway"])
def server(request) -> ServerProcess:
    return request.getfixturevalue(request.param)


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_stop_takes_up_to_four_strings_as_openai_documents(client):
    reply = client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=2,
                                           stop=["<a>", "<b>", "<c>", "<d>"])
    assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=2,
                                       stop=["<a>", "<b>", "<c>", "<d>", "<e>"])
    error = refused.value.body
    assert error["code"] == "invalid_parameter" and error["param"] == "stop" and "4" in error["message"]


@pytest.mark.parametrize("asked, used", [(None, 0.7), (0.3, 0.3)], ids=["modelfile-default", "asked"])
def test_temperature_is_the_request_s_else_the_modelfile_s(client, bridge, asked, used):
    before = len(bridge.recorded())
    extra = {} if asked is None else {"temperature": asked}
    client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=2, **extra)
    records = bridge.recorded()[before:]
    assert [r["params"]["temperature"] for r in records] == [used]  # TEMPERATURE=0.7 in the test Modelfile


def test_replies_carry_system_fingerprint_and_null_logprobs(client):
    whole = client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=2)
    assert whole.system_fingerprint and whole.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=2, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.system_fingerprint == whole.system_fingerprint for c in chunks)
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 2 and chunks[-1].choices == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_reply_cut_by_the_deadline_finishes_with_length(client, stream):
    if stream:
        chunks = list(client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=60,
                                                     stream=True))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(model=SIM_MODEL, messages=HELLO, max_tokens=60)
        finishes, text = [reply.choices[0].finish_reason], reply.choices[0].message.content
        assert 0 < reply.usage.completion_tokens < 60
    assert finishes == ["length"] and text


@pytest.mark.parametrize("body, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages"),
])
def test_bad_fields_get_the_same_openai_typed_400(server, body, param):
    r = requests.post(server.url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": HELLO, **body},
                      timeout=60)
    error = r.json()["error"]
    assert r.status_code == 400 and error["type"] == "invalid_request_error" and error["param"] == param, error
    assert param in error["message"]


def test_request_ids_are_echoed_or_made_up(server):
    given = requests.get(server.url + "/v1/models", headers={"X-Request-Id": "trace-42"}, timeout=30)
    assert given.status_code == 200 and given.headers["X-Request-Id"] == "trace-42"
    made = requests.post(server.url + "/v1/chat/completions", data=b"{", timeout=30,
                         headers={"X-Request-Id": "has spaces", "Content-Type": "application/json"})
    assert made.status_code == 400 and made.json()["error"]["code"] == "invalid_json"
    rid = made.headers["X-Request-Id"]
    assert rid != "has spaces" and len(rid) == 32
    assert rid in server.log_path.read_text()  # the error's log line names the request
