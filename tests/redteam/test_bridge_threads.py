"""One thread budget: image jobs run on lanes of their own, so six SR requests on a bridge with four
HTTP threads leave /health (and the LLM routes) answering while the SR workers are busy."""

from __future__ import annotations

import requests

from ..conftest import SIM_MODEL
from ..support import wait_for
from .conftest import png, upscale_in_threads


def test_six_sr_requests_on_four_threads_leave_health_and_chat_answering(start_bridge):
    b = start_bridge("--sim-profile", "instant", "--threads", "4")
    jobs, codes = upscale_in_threads(b.url + "/image/superres", png(480, 480), 6)
    wait_for(lambda: b.get_json("/health")[1]["threads"]["sr"]["in_flight"] == 6, timeout=60,
             what="six SR requests in flight")
    status, health = b.get_json("/health", timeout=60)
    assert status == 200 and health["threads"]["sr"]["in_flight"] >= 1, "answered while SR was busy"
    chat = requests.post(b.url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
    assert chat.status_code == 200
    assert b.get_json("/health")[1]["threads"]["sr"]["in_flight"] >= 1, "the chat did not wait for the SR jobs"
    for t in jobs:
        t.join(600)
    assert codes == [200] * 6
