"""No response bleed: a stream cancelled mid-way, then at once a new request on the same (single)
handle; the new reply is exactly its own tokens from the start, never the old one's tail. Repeated
many times on the sim twin and on the stub librkllmrt."""

from __future__ import annotations

import json

import pytest
import requests

from ..support import wait_for
from .helpers import DEFAULT_REPLY, RUNTIMES, SIM_MODEL, runtime_env

ROUNDS = 25


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cancel_then_new_request_never_shows_the_old_tail(runtime, start_bridge, default_tokenizer):
    args, env = runtime_env(runtime, default_tokenizer, decode_tok_s=250)
    b = start_bridge(*args, runtime=runtime, env=env)
    reply_ids = default_tokenizer.encode(DEFAULT_REPLY)
    session = requests.Session()
    for round_ in range(ROUNDS):
        cut = 2 + round_ % 7  # cancel after a varying number of tokens
        seen = []
        with session.post(b.url + "/v1/generate", stream=True, timeout=60, json={
                "model": SIM_MODEL, "messages": [{"role": "user", "content": f"old request {round_}"}]}) as r:
            for line in r.iter_lines():
                seen.append(json.loads(line)["token_id"])
                if len(seen) == cut:
                    break
        new = requests.post(b.url + "/v1/generate", timeout=60, json={
            "model": SIM_MODEL, "max_new_tokens": 6,
            "messages": [{"role": "user", "content": f"new request {round_}"}]})
        lines = [json.loads(x) for x in new.text.splitlines() if x]
        assert [x["token_id"] for x in lines[:-1]] == reply_ids[:6], f"round {round_}: foreign tokens"
        assert lines[-1]["finish_reason"] == "length" and lines[-1]["usage"]["completion_tokens"] == 6
        assert seen == reply_ids[:cut]
    # every cancelled stream was aborted in the runtime (not left to finish on its own)
    wait_for(lambda: b.get_json("/health")[1]["aborts_total"] == ROUNDS, timeout=10, what="all rounds aborted")
