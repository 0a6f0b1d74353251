"""The bridge over real HTTP: a real process on an ephemeral loopback port, real clients.

Every test here runs on each runtime in ``RUNTIMES`` (the sim twin, and the librkllmrt binding on the
gcc-built stub library when gcc is available), so the on-device code path is exercised end to end.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from rkllama_bridge.runtimes.sim import DEFAULT_REPLY

from ..conftest import SIM_MODEL, SIM_MODEL_2
from ..support import wait_for
from .runtimes import RUNTIMES, runtime_options

pytestmark = pytest.mark.parametrize("runtime", RUNTIMES)

CHAT = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def bridge(start_bridge, runtime, default_tokenizer):
    """A fast bridge (no simulated delays) with a small queue."""
    def start(*extra, **kw):
        args, env = runtime_options(runtime, default_tokenizer, **kw.pop("timing", {}))
        return start_bridge(*args, "--queue-max", "2", *extra, runtime=runtime, env=env, **kw)
    return start


def stream_lines(url: str, path: str, body: dict, **kw):
    with requests.post(url + path, json=body, stream=True, timeout=60, **kw) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line:
                yield line.decode("utf-8")


def native_stream(url, body):
    return [json.loads(line) for line in stream_lines(url, "/v1/generate", body)]


def test_native_stream_gives_tokens_then_done_with_usage_and_timings(bridge, default_tokenizer):
    b = bridge()
    lines = native_stream(b.url, {"model": SIM_MODEL, "messages": CHAT})
    tokens, done = lines[:-1], lines[-1]
    assert done["done"] is True and done["finish_reason"] == "stop"
    assert "".join(t["text"] for t in tokens) == DEFAULT_REPLY
    assert [t["token_id"] for t in tokens] == default_tokenizer.encode(DEFAULT_REPLY)
    assert done["usage"]["completion_tokens"] == len(tokens)
    assert done["usage"]["prompt_tokens"] == len(default_tokenizer.encode_chat(CHAT))
    assert set(done["timings"]) == {"queue_ms", "prefill_ms", "ttft_ms", "decode_tok_s"}


def test_multibyte_characters_split_across_tokens_arrive_intact(bridge, default_tokenizer):
    b = bridge()
    tokens = native_stream(b.url, {"model": SIM_MODEL, "messages": CHAT})[:-1]
    assert not any("\ufffd" in t["text"] for t in tokens)
    assert any(t["text"] == "" for t in tokens), "the emoji spans several tokens, so some lines hold text back"
    assert "🥞" in "".join(t["text"] for t in tokens) and "日本語" in "".join(t["text"] for t in tokens)


def test_native_stream_accepts_token_ids_and_honours_max_new_tokens(bridge, default_tokenizer):
    b = bridge()
    ids = default_tokenizer.encode_chat(CHAT)
    lines = native_stream(b.url, {"model": SIM_MODEL, "prompt_token_ids": ids, "max_new_tokens": 5})
    assert len(lines) == 6 and lines[-1]["finish_reason"] == "length"
    assert lines[-1]["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 5, "total_tokens": len(ids) + 5}


def test_multi_turn_conversation_with_system_prompt_reaches_the_runtime(bridge, default_tokenizer, tmp_path):
    record = tmp_path / "prompts.jsonl"
    b = bridge("--record-prompts", str(record))
    conversation = [{"role": "system", "content": "You answer in French."},
                    {"role": "user", "content": "What is the capital of Italy?"},
                    {"role": "assistant", "content": "Rome."},
                    {"role": "user", "content": "And of Spain?"}]
    r = requests.post(b.url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": conversation}, timeout=60)
    assert r.status_code == 200, r.text
    sent = json.loads(record.read_text().splitlines()[-1])
    assert sent["prompt_token_ids"] == default_tokenizer.encode_chat(conversation)
    prompt = default_tokenizer.decode(sent["prompt_token_ids"], skip_special_tokens=False)
    for turn in conversation:
        assert turn["content"] in prompt
    assert prompt.index("French") < prompt.index("Italy") < prompt.index("Rome") < prompt.index("Spain")


def test_modelfile_system_prompt_applies_only_without_a_system_message(bridge, default_tokenizer, tmp_path):
    record = tmp_path / "prompts.jsonl"
    b = bridge("--record-prompts", str(record))
    for messages in (CHAT, [{"role": "system", "content": "Own system."}] + CHAT):
        assert requests.post(b.url + "/api/chat", json={"model": SIM_MODEL_2, "messages": messages, "stream": False},
                             timeout=60).status_code == 200
    first, second = [default_tokenizer.decode(json.loads(line)["prompt_token_ids"], skip_special_tokens=False)
                     for line in record.read_text().splitlines()]
    assert "You are a terse assistant." in first
    assert "Own system." in second and "terse" not in second


def test_openai_chat_stream_and_not(bridge):
    b = bridge()
    r = requests.post(b.url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": CHAT}, timeout=60)
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] > 0
    events = list(stream_lines(b.url, "/v1/chat/completions", {"model": SIM_MODEL, "messages": CHAT, "stream": True,
                                                              "stream_options": {"include_usage": True}}))
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == DEFAULT_REPLY
    assert [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] == "stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == body["usage"]["completion_tokens"]


def test_openai_stop_string_cuts_the_reply_and_frees_the_handle(bridge):
    b = bridge()
    r = requests.post(b.url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": CHAT, "stop": ["crêpes"]},
                      timeout=60).json()
    assert r["choices"][0]["message"]["content"] == DEFAULT_REPLY[:DEFAULT_REPLY.index("crêpes")]
    assert r["choices"][0]["finish_reason"] == "stop"
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, what="handle released after stop string")


def test_ollama_chat_and_generate_stream_and_not(bridge):
    b = bridge()
    lines = [json.loads(x) for x in stream_lines(b.url, "/api/chat", {"model": SIM_MODEL, "messages": CHAT})]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] > 0
    assert "".join(x["message"]["content"] for x in lines) == DEFAULT_REPLY
    one = requests.post(b.url + "/api/chat", json={"model": SIM_MODEL, "messages": CHAT, "stream": False}).json()
    assert one["message"]["content"] == DEFAULT_REPLY and one["done"] is True
    gen = [json.loads(x) for x in stream_lines(b.url, "/api/generate", {"model": SIM_MODEL, "prompt": "Hi",
                                                                        "options": {"num_predict": 4}})]
    assert len(gen) == 5 and gen[-1]["done_reason"] == "length"
    one = requests.post(b.url + "/api/generate", json={"model": SIM_MODEL, "prompt": "Hi", "stream": False}).json()
    assert one["response"] == DEFAULT_REPLY


def test_rkllama_routes_keep_rkllama_shapes(bridge):
    b = bridge()
    assert b.get_json("/")[0] == 200
    assert b.get_json("/models")[1] == {"models": sorted([SIM_MODEL, SIM_MODEL_2])}
    assert b.get_json("/current_model")[0] == 404
    status, body = b.post_json("/load_model", {"model_name": SIM_MODEL})
    assert status == 200 and SIM_MODEL in body["message"]
    assert b.get_json("/current_model")[1] == {"model_name": SIM_MODEL}
    status, body = b.post_json("/generate", {"messages": CHAT, "stream": False})
    assert status == 200 and body["object"] == "rkllm_chat" and body["choices"][0]["content"] == DEFAULT_REPLY
    chunks = [json.loads(x) for x in stream_lines(b.url, "/generate", {"messages": "Hello", "stream": True})]
    assert "".join(c["choices"][0]["content"] for c in chunks) == DEFAULT_REPLY
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert b.post_json("/unload_model", {"model_name": SIM_MODEL})[0] == 200
    assert b.post_json("/unload_model", {"model_name": SIM_MODEL})[0] == 400
    assert b.get_json("/current_model")[0] == 404


def test_model_listings_and_ps(bridge):
    b = bridge()
    assert [m["id"] for m in b.get_json("/v1/models")[1]["data"]] == sorted([SIM_MODEL, SIM_MODEL_2])
    assert [m["name"] for m in b.get_json("/api/tags")[1]["models"]] == sorted([SIM_MODEL, SIM_MODEL_2])
    assert b.get_json("/api/ps")[1] == {"models": []}
    b.post_json("/load_model", {"model_name": SIM_MODEL_2})
    assert [m["name"] for m in b.get_json("/api/ps")[1]["models"]] == [SIM_MODEL_2]
    info = b.get_json(f"/v1/models/{SIM_MODEL_2}")[1]
    assert info["num_ctx"] == 256 and info["hf_repo"] == "Qwen/Qwen2.5-1.5B-Instruct" and info["loaded"] is True


def test_tokenizer_files_tokenize_and_detokenize(bridge, default_tokenizer, default_model_dir):
    b = bridge()
    index = b.get_json(f"/v1/models/{SIM_MODEL}/tokenizer")[1]
    assert "tokenizer.json" in index["files"] and index["eos_token_ids"] == default_tokenizer.eos_token_ids
    status, _, raw = b.request("GET", f"/v1/models/{SIM_MODEL}/tokenizer/tokenizer.json")
    assert status == 200 and raw == (default_model_dir / "tokenizer.json").read_bytes()
    assert b.request("GET", f"/v1/models/{SIM_MODEL}/tokenizer/Modelfile")[0] == 404
    ids = b.post_json("/v1/tokenize", {"model": SIM_MODEL, "text": "naïve 🦊"})[1]["token_ids"]
    assert ids == default_tokenizer.encode("naïve 🦊")
    assert b.post_json("/v1/detokenize", {"model": SIM_MODEL, "token_ids": ids})[1]["text"] == "naïve 🦊"
    chat_ids = b.post_json("/v1/tokenize", {"model": SIM_MODEL, "messages": CHAT})[1]["token_ids"]
    assert chat_ids == default_tokenizer.encode_chat(CHAT)


def test_metrics_and_health(bridge):
    b = bridge()
    native_stream(b.url, {"model": SIM_MODEL, "messages": CHAT})
    status, _, raw = b.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200
    for name in ("bridge_queue_depth", "bridge_active_requests", "bridge_generated_tokens_total",
                 "bridge_ttft_seconds_bucket", "bridge_decode_tokens_per_second_bucket"):
        assert name in text
    health = b.get_json("/health")[1]
    assert health["status"] == "ok" and health["models"][0]["name"] == SIM_MODEL
    assert health["runtime"]["name"] == b.argv[b.argv.index("--runtime") + 1]


def _timed_stream(url, body, log, tag):
    for line in stream_lines(url, "/v1/generate", body):
        event = json.loads(line)
        log.append((tag, "done" if event.get("done") else "token", time.monotonic()))


def test_two_requests_on_one_handle_run_one_after_the_other(bridge):
    b = bridge(timing={"decode_tok_s": 40})
    log: list = []
    body = {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 8}
    first = threading.Thread(target=_timed_stream, args=(b.url, body, log, "A"))
    first.start()
    wait_for(lambda: any(e[0] == "A" for e in log), what="first request streaming")
    second = threading.Thread(target=_timed_stream, args=(b.url, body, log, "B"))
    second.start()
    wait_for(lambda: b.get_json("/health")[1]["models"][0]["queued"] == 1, what="second request queued")
    first.join(30)
    second.join(30)
    tags = [e[0] for e in log]
    assert tags == ["A"] * 9 + ["B"] * 9, "streams interleaved: the handle ran two requests at once"


def test_queue_overflow_is_429_with_retry_after(bridge):
    b = bridge(timing={"decode_tok_s": 20})
    body = {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 60}
    clients = [_open_stream(b, body)]
    wait_for(lambda: b.get_json("/health")[1]["active"] == 1, what="first request running")
    clients += [_open_stream(b, body), _open_stream(b, body)]
    wait_for(lambda: b.get_json("/health")[1]["models"][0]["queued"] == 2, what="queue full")
    r = requests.post(b.url + "/v1/generate", json=body, timeout=30)
    assert r.status_code == 429 and r.headers["Retry-After"] and r.json()["error"]["code"] == "queue_full"
    for sock in clients:
        _drop(sock)
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, what="all dropped requests released")


def _open_stream(b, body: dict) -> socket.socket:
    """A raw HTTP request on a socket we can drop at any moment, like a client that goes away."""
    sock = socket.create_connection(("127.0.0.1", b.port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def _drop(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_client_disconnect_mid_stream_aborts_the_runtime(bridge):
    b = bridge(timing={"decode_tok_s": 20})
    sock = _open_stream(b, {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 200})
    received = b""
    while b'"token_id"' not in received:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the first token"
        received += chunk
    _drop(sock)
    wait_for(lambda: b.get_json("/health")[1]["aborts_total"] == 1, timeout=5, what="abort after disconnect")
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, timeout=5, what="handle free again")
    lines = native_stream(b.url, {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 3})
    assert lines[-1]["finish_reason"] == "length"


def test_client_disconnect_while_queued_leaves_the_queue(bridge):
    b = bridge(timing={"decode_tok_s": 20})
    body = {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 60}
    running = _open_stream(b, body)
    wait_for(lambda: b.get_json("/health")[1]["active"] == 1, what="first request running")
    queued = _open_stream(b, body)
    wait_for(lambda: b.get_json("/health")[1]["models"][0]["queued"] == 1, what="second request queued")
    _drop(queued)
    wait_for(lambda: b.get_json("/health")[1]["models"][0]["queued"] == 0, timeout=5, what="queued request dropped")
    _drop(running)


def test_context_overflow_is_a_400_with_the_numbers(bridge, default_tokenizer):
    b = bridge()
    status, body = b.post_json("/v1/generate", {"model": SIM_MODEL_2, "messages": [
        {"role": "user", "content": "word " * 300}]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "256" in body["error"]["message"]
    status, body = b.post_json("/v1/chat/completions", {"model": SIM_MODEL_2, "messages": CHAT, "max_tokens": 250})
    assert status == 400 and "250" in body["error"]["message"] and "256" in body["error"]["message"]


BAD_INPUTS = [
    ("POST", "/v1/generate", b"{not json", 400, "invalid_json"),
    ("POST", "/v1/generate", b"[1, 2]", 400, "invalid_body"),
    ("POST", "/v1/generate", b"", 400, "invalid_body"),
    ("POST", "/v1/generate", {"model": SIM_MODEL}, 400, "invalid_prompt"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "prompt_token_ids": "abc"}, 400, "invalid_token_ids"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "prompt_token_ids": [1, 10**9]}, 400, "invalid_token_ids"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "prompt_token_ids": []}, 400, "empty_prompt"),
    ("POST", "/v1/generate", {"model": "nope", "messages": CHAT}, 404, "model_not_found"),
    ("POST", "/v1/generate", {"model": "../../etc", "messages": CHAT}, 400, "invalid_model_name"),
    ("POST", "/v1/generate", {"model": 42, "messages": CHAT}, 400, "invalid_parameter"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": -3}, 400, "invalid_parameter"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "messages": CHAT, "max_new_tokens": 10**12}, 400,
     "invalid_parameter"),
    ("POST", "/v1/generate", {"model": SIM_MODEL, "messages": CHAT, "temperature": "warm"}, 400, "invalid_parameter"),
    ("POST", "/v1/chat/completions", {"model": SIM_MODEL, "messages": "hi"}, 400, "invalid_messages"),
    ("POST", "/v1/chat/completions", {"model": SIM_MODEL, "messages": [{"content": "no role"}]}, 400,
     "invalid_messages"),
    ("POST", "/v1/chat/completions", {"model": SIM_MODEL, "messages": CHAT, "stream": "yes"}, 400,
     "invalid_parameter"),
    ("POST", "/v1/chat/completions", {"model": SIM_MODEL, "messages": CHAT, "stop": [1]}, 400, "invalid_parameter"),
    ("POST", "/api/chat", {"model": SIM_MODEL, "messages": CHAT, "options": "fast"}, 400, "invalid_parameter"),
    ("POST", "/api/generate", {"model": SIM_MODEL}, 400, "invalid_prompt"),
    ("POST", "/load_model", {}, 400, "model_required"),
    ("POST", "/load_model", {"model_name": "../x"}, 400, "invalid_model_name"),
    ("POST", "/load_model", {"model_name": "missing"}, 404, "model_not_found"),
    ("POST", "/v1/detokenize", {"model": SIM_MODEL, "token_ids": ["a"]}, 400, "invalid_token_ids"),
    ("GET", "/v1/models/..%2F..%2Fetc/tokenizer/passwd", None, 404, None),
    ("GET", "/no/such/route", None, 404, "not_found"),
    ("DELETE", "/v1/generate", None, 405, "method_not_allowed"),
    ("POST", "/v1/generate", b"{" + b" " * (2 * 2**20) + b"}", 413, "request_entity_too_large"),
]


def test_bad_inputs_get_clear_4xx_json_and_the_server_keeps_serving(bridge):
    b = bridge("--max-body-bytes", str(2**20))
    for method, path, body, status, code in BAD_INPUTS:
        got, headers, raw = b.request(method, path, body)
        assert got == status, (path, body if not isinstance(body, bytes) else body[:40], raw[:200])
        error = json.loads(raw)["error"]
        assert error["message"] and (code is None or error["code"] == code), (path, error)
    lines = native_stream(b.url, {"model": SIM_MODEL, "messages": CHAT})
    assert lines[-1]["finish_reason"] == "stop"


def test_bearer_token_guards_every_route_but_health(bridge):
    b = bridge(token="s3cret")
    assert requests.get(b.url + "/health", timeout=10).status_code == 200
    for path in ("/models", "/v1/models", "/api/tags", "/metrics"):
        r = requests.get(b.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert requests.get(b.url + path, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        assert requests.get(b.url + path, headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200
    r = requests.post(b.url + "/v1/generate", json={"model": SIM_MODEL, "messages": CHAT}, timeout=10)
    assert r.status_code == 401
