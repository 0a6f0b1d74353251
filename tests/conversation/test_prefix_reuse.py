"""Prefix reuse over real HTTP: a follow-up turn sends the runtime only its new tokens, anything else
starts from a cleared cache, and several handles keep their own conversations."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from .helpers import (
    DEFAULT_REPLY,
    RUNTIMES,
    SIM_MODEL,
    follow_up,
    ollama_chat,
    openai_chat,
    read_records,
    runs,
    runtime_env,
)

needs_stub = pytest.mark.skipif("rkllm" not in RUNTIMES, reason="gcc is needed to build the stub librkllmrt")
TURN1 = [{"role": "user", "content": "Hello there"}]


def _reply(route: str, body: dict) -> str:
    return body["choices"][0]["message"]["content"] if route == "openai" else body["message"]["content"]


@needs_stub
@pytest.mark.parametrize("route", ["openai", "ollama"])
def test_follow_up_sends_only_new_tokens_and_unrelated_prompt_clears_the_cache(route, start_bridge,
                                                                               default_tokenizer, tmp_path):
    record = tmp_path / "calls.jsonl"
    args, env = runtime_env("rkllm", default_tokenizer, record)
    b = start_bridge(*args, runtime="rkllm", env=env)
    chat = openai_chat if route == "openai" else ollama_chat
    first = chat(b.url, TURN1)
    turn2 = follow_up(TURN1, _reply(route, first), "And then?")
    second = chat(b.url, turn2)
    p1, p2 = default_tokenizer.encode_chat(TURN1), default_tokenizer.encode_chat(turn2)
    cached = len(p1) + len(default_tokenizer.encode(DEFAULT_REPLY))
    r1, r2 = runs(record)
    assert r1["token_ids"] == p1 and r1["keep_history"] == 1
    assert r2["token_ids"] == p2[cached:] and r2["keep_history"] == 1 and r2["kv_len_before"] == cached
    if route == "openai":
        assert second["usage"]["prompt_tokens"] == len(p2)
        assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert _reply(route, second) == DEFAULT_REPLY

    other = [{"role": "user", "content": "Something else entirely"}]
    third = chat(b.url, other)
    *_, clear, last = read_records(record)
    assert clear["event"] == "clear_kv_cache" and clear["kv_len_before"] == len(p2) + len(
        default_tokenizer.encode(DEFAULT_REPLY))
    assert last["token_ids"] == default_tokenizer.encode_chat(other) and last["kv_len_before"] == 0
    if route == "openai":
        assert "prompt_tokens_details" not in third["usage"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_native_token_ids_reuse_the_cache_and_report_cached_tokens(runtime, start_bridge, default_tokenizer):
    """The exo engine's path: prompt_token_ids in, the reply's ids appended by the client."""
    args, env = runtime_env(runtime, default_tokenizer)
    b = start_bridge(*args, runtime=runtime, env=env)
    ids = default_tokenizer.encode_chat(TURN1)

    def generate(prompt_ids):
        r = requests.post(b.url + "/v1/generate", json={"model": SIM_MODEL, "prompt_token_ids": prompt_ids},
                          timeout=60)
        assert r.status_code == 200, r.text
        lines = [json.loads(x) for x in r.text.splitlines() if x]
        return [x["token_id"] for x in lines[:-1]], lines[-1]

    reply, done = generate(ids)
    assert "cached_tokens" not in done["usage"]
    more = ids + reply + default_tokenizer.encode("<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n")
    _, done2 = generate(more)
    assert done2["usage"]["cached_tokens"] == len(ids) + len(reply)
    _, done3 = generate(ids)  # a shorter prompt than the cache: no reuse
    assert "cached_tokens" not in done3["usage"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_concurrent_conversations_stay_on_their_handles(runtime, start_bridge, default_tokenizer, tmp_path):
    record = tmp_path / "calls.jsonl"
    args, env = runtime_env(runtime, default_tokenizer, record)
    b = start_bridge(*args, "--instances", "2", runtime=runtime, env=env)
    convs = {"A": [{"role": "user", "content": "Conversation A"}],
             "B": [{"role": "user", "content": "Conversation B, another topic"}]}
    results = {}

    def turn(key: str, question: str) -> None:
        convs[key] = follow_up(convs[key], DEFAULT_REPLY, question) if question else convs[key]
        results[question or key] = openai_chat(b.url, convs[key])

    turn("A", "")
    turn("B", "")
    # B first: the handle idle the longest holds A's cache, so plain FIFO would mix them up.
    turn("B", "B again")
    turn("A", "A again")
    both = [threading.Thread(target=turn, args=(k, f"{k} third")) for k in "AB"]
    for t in both:  # then both conversations at the same time
        t.start()
    for t in both:
        t.join()
    reply_len = len(default_tokenizer.encode(DEFAULT_REPLY))
    for key in "AB":
        for question, before in ((f"{key} again", 2), (f"{key} third", 4)):
            expected = len(default_tokenizer.encode_chat(convs[key][:before - 1])) + reply_len
            assert results[question]["usage"]["prompt_tokens_details"] == {"cached_tokens": expected}, question
    if runtime == "rkllm":  # the stub logs which native handle ran what
        handle_of = {}
        for r in runs(record):
            text = default_tokenizer.decode(r["token_ids"])
            label = next(k for k in ("Conversation A", "Conversation B", "A again", "B again", "A third", "B third")
                         if k in text)
            handle_of[label] = r["handle"]
        assert handle_of["Conversation A"] != handle_of["Conversation B"]
        for key in "AB":
            assert handle_of[f"{key} again"] == handle_of[f"{key} third"] == handle_of[f"Conversation {key}"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_aborted_reply_invalidates_the_cache(runtime, start_bridge, default_tokenizer, tmp_path):
    record = tmp_path / "calls.jsonl"
    args, env = runtime_env(runtime, default_tokenizer, record, decode_tok_s=50)
    b = start_bridge(*args, runtime=runtime, env=env)
    partial = ""
    with requests.post(b.url + "/api/chat", json={"model": SIM_MODEL, "messages": TURN1}, stream=True,
                       timeout=60) as r:
        for n, line in enumerate(r.iter_lines()):
            partial += json.loads(line)["message"]["content"]
            if n == 3:
                break
    turn2 = follow_up(TURN1, partial, "Go on")
    body = openai_chat(b.url, turn2, max_tokens=4)
    assert "prompt_tokens_details" not in body["usage"]
    if runtime == "rkllm":
        *_, clear, last = read_records(record)
        assert clear["event"] == "clear_kv_cache"
        assert last["token_ids"] == default_tokenizer.encode_chat(turn2)


def test_no_prefix_reuse_flag_sends_whole_prompts(start_bridge, default_tokenizer):
    b = start_bridge("--sim-profile", "instant", "--no-prefix-reuse")
    reply = openai_chat(b.url, TURN1)["choices"][0]["message"]["content"]
    body = openai_chat(b.url, follow_up(TURN1, reply, "Again"))
    assert "prompt_tokens_details" not in body["usage"]
