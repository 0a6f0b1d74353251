"""Schemathesis against a real bridge process (sim runtime, bearer token on)."""

from __future__ import annotations

import requests

from rkllama_bridge.openapi import build_spec

from .fuzzing import fuzz_server

TOKEN = "fuzz-token"
FAST_SIM = ("--sim-decode-tok-s", "5000", "--sim-prefill-ms-per-token", "0", "--sim-load-s", "0")


def test_generated_requests_get_no_500_and_match_the_document(start_bridge):
    bridge = start_bridge(*FAST_SIM, token=TOKEN)
    report = fuzz_server(bridge.url, TOKEN)
    print(f"bridge fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])
    assert bridge.get_json("/health")[0] == 200, "the bridge stopped serving"


def test_every_route_but_health_needs_the_token(start_bridge):
    bridge = start_bridge(*FAST_SIM, token=TOKEN)
    for path, ops in build_spec()["paths"].items():
        url = bridge.url + path.replace("{name}", "qwen-sim").replace("{fname}", "tokenizer.json")
        for method in ops:
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                r = requests.request(method, url, headers=auth, json={}, timeout=30)
                if path == "/health":
                    assert r.status_code == 200
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
                    assert r.json()["error"]["code"] == "unauthorized"
