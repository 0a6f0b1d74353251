"""Bounded memory per request: prompts far beyond the context are refused before tokenizing, and the
bridge's RSS after twelve 1 MB prompts stays on a plateau instead of growing per request."""

from __future__ import annotations

from ..conftest import SIM_MODEL

MB_PROMPT = "word " * (2**20 // 5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_twelve_1mb_prompts_leave_rss_on_a_plateau(plain_bridge):
    b = plain_bridge
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": MB_PROMPT}]}
    after = []
    for path in ["/v1/chat/completions", "/api/chat", "/generate"] * 4:
        status, reply = b.post_json(path, {**body, "stream": False}, timeout=120)
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
        assert "characters" in reply["error"]["message"]
        after.append(rss_mb(b.proc.pid))
    # the first request warms the parsers up; after it, twelve megabyte requests must not add up
    assert after[-1] - after[0] < 60, f"RSS grew from {after[0]:.0f} to {after[-1]:.0f} MB"
    assert b.get_json("/health")[0] == 200
