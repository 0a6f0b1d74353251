"""The image service's JSON errors for deep nesting and waitress's own refusals, Retry-After on 429."""

from __future__ import annotations

import requests

from ..support import wait_for
from .conftest import png, upscale_in_threads
from .rawhttp import exchange


def test_100000_nested_brackets_are_a_400_json(start_image_service):
    img = start_image_service()
    r = requests.post(img.url + "/generate", data=b"[" * 100_000, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_input", r.text[:200]


def test_waitress_refusals_are_json(start_image_service):
    img = start_image_service()
    for want, raw in {431: b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
                      400: b"GARBAGE\r\n\r\n"}.items():
        status, headers, body = exchange(img.port, raw)
        assert status == want and headers["content-type"] == "application/json" and body["error"]["message"]


def test_a_full_sr_lane_answers_429_with_retry_after_without_a_thread(start_image_service):
    img = start_image_service(env={"SR_QUEUE_MAX": "1", "SR_NUM_WORKERS": "1"})
    data = png(640, 640)
    workers, done = upscale_in_threads(img.url + "/superres", data, 2)
    wait_for(lambda: img.get_json("/health")[1]["threads"]["sr"]["in_flight"] == 2, timeout=60,
             what="the SR lane full (one running, one queued)")
    r = requests.post(img.url + "/superres", files={"file": ("a.png", data, "image/png")}, timeout=60)
    lane = img.get_json("/health")[1]["threads"]["sr"]
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "queue_full"
    assert lane["rejected"] >= 1
    for t in workers:
        t.join(300)
    assert done == [200, 200]
