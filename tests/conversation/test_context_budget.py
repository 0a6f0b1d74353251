"""Context budget: an overflow is a 400 with the numbers unless the client asks for truncation, and
"truncate": "left" drops the oldest turns, keeps the system message and the last turn, and says so."""

from __future__ import annotations

import json

from rkllama_bridge.context import truncate_left

from ..conftest import SIM_MODEL_2

LONG = "word " * 60  # ~60 tokens per message; SIM_MODEL_2 has NUM_CTX 256 and MAX_NEW_TOKENS 64


def conversation(turns: int) -> list:
    msgs = [{"role": "system", "content": "Keep me."}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i} {LONG}"}, {"role": "assistant", "content": f"answer {i}"}]
    return msgs + [{"role": "user", "content": "the last question"}]


def test_overflow_is_a_400_with_the_numbers_and_truncate_left_fits(start_bridge, tmp_path, default_tokenizer):
    record = tmp_path / "prompts.jsonl"
    b = start_bridge("--sim-profile", "instant", "--record-prompts", str(record))
    msgs = conversation(5)
    status, body = b.post_json("/v1/chat/completions", {"model": SIM_MODEL_2, "messages": msgs})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "256" in body["error"]["message"] and "truncate" in body["error"]["message"]
    assert not record.exists(), "nothing reached the runtime"
    for path, extra in (("/v1/chat/completions", {}), ("/api/chat", {"stream": False})):
        status, body = b.post_json(path, {"model": SIM_MODEL_2, "messages": msgs, "truncate": "left", **extra})
        assert status == 200, body
        sent = json.loads(record.read_text().splitlines()[-1])["prompt_token_ids"]
        assert len(sent) + 64 <= 256
        prompt = default_tokenizer.decode(sent, skip_special_tokens=False)
        assert "Keep me." in prompt and "the last question" in prompt and "question 0 " not in prompt
        assert prompt.index("<|im_start|>user") < prompt.index("<|im_start|>assistant"), "starts with a user turn"
        if path.startswith("/v1"):
            assert body["truncated_messages"] >= 2
    status, body = b.post_json("/v1/chat/completions", {"model": SIM_MODEL_2, "messages": msgs, "truncate": "all"})
    assert status == 400 and body["error"]["code"] == "invalid_parameter"


def test_truncate_left_fails_clearly_when_the_last_message_alone_is_too_long():
    def encode(msgs):
        return [0] * sum(len(m["content"]) for m in msgs)

    ids, dropped = truncate_left([{"role": "system", "content": "ab"}, {"role": "user", "content": "abcd"},
                                  {"role": "assistant", "content": "x"}, {"role": "user", "content": "xyz"}],
                                 encode, 5)
    assert (len(ids), dropped) == (5, 2)
    try:
        truncate_left([{"role": "user", "content": "a" * 10}], encode, 5)
    except Exception as exc:  # noqa: BLE001 - the type and message are what is checked
        assert type(exc).__name__ == "ContextOverflow" and "10 tokens" in str(exc)
    else:
        raise AssertionError("an overflow that no truncation can fix must be an error")
