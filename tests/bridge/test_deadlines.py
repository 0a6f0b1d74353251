"""--request-timeout: a running generation is cut at its deadline and a queued one gives up with a 503."""

import json

import requests

from ..conftest import SIM_MODEL
from ..support import wait_for

LONG = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 60}


def test_running_request_is_cut_at_its_deadline_and_the_handle_serves_again(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--sim-decode-tok-s", "20", "--request-timeout", "0.5")
    with requests.post(b.url + "/v1/generate", json=LONG, stream=True, timeout=30) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[-1]["finish_reason"] == "timeout"
    assert 0 < lines[-1]["usage"]["completion_tokens"] < 60  # at 20 tok/s the deadline lands mid-reply
    r = requests.post(b.url + "/v1/chat/completions", json={**LONG, "max_tokens": 60}, timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "length"  # OpenAI clients see the limit that cut the reply
    wait_for(lambda: b.get_json("/health")[1]["active"] == 0, what="handle free after the deadline")


def test_a_request_still_queued_at_its_deadline_leaves_with_a_503():
    # Over HTTP a queued request normally gets the handle first (the one ahead is cut at its own, earlier
    # deadline); this pins what happens when the runtime is slow to stop.
    import time

    import pytest

    from rkllama_bridge.errors import ModelUnavailable
    from rkllama_bridge.scheduler import HandleQueue
    from rkllama_bridge.service import _queue_deadline

    q = HandleQueue(["h"], queue_max=4)
    q.acquire()
    with pytest.raises(ModelUnavailable) as exc:
        q.acquire(_queue_deadline(lambda: False, time.monotonic() + 0.2))
    assert exc.value.status == 503 and exc.value.code == "deadline_exceeded" and q.queued == 0


def test_request_timeout_must_be_positive():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "rkllama_bridge", "serve", "--runtime", "sim",
                             "--request-timeout", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--request-timeout must be" in result.stderr
