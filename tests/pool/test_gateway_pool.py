"""``exo-rk serve`` over several bridges (``RKLLM_SERVERS``): chats are spread, ``/metrics`` shows the
pool, every bridge down is a quick 503, and a restarted bridge serves again."""

from __future__ import annotations

import signal
import sys

from tests.pool.conftest import QWEN
from tests.pool.runs import metric
from tests.support import ServerProcess, wait_for

CHAT = {"model": QWEN, "messages": [{"role": "user", "content": "Hello there."}], "max_tokens": 8}


def test_gateway_spreads_chats_shows_metrics_and_answers_503_when_every_bridge_is_down(start_bridges,
                                                                                      tmp_path):
    bridges = start_bridges(["--preload", QWEN], ["--preload", QWEN])
    env = {"RKLLM_SERVERS": ",".join(b.url for b in bridges), "EXO_HOME": str(tmp_path / "exo-home"),
           "RKLLM_HEALTH_INTERVAL": "0.2", "RKLLM_HEALTH_MAX_BACKOFF": "0.5"}
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--log-level", "WARNING"]
    with ServerProcess(argv, env=env, startup_timeout=60) as gateway:
        for _ in range(4):
            status, body = gateway.post_json("/v1/chat/completions", CHAT, timeout=60)
            assert status == 200, body
            choice = body["choices"][0]
            assert choice["finish_reason"] == "length" and choice["message"]["content"]
        status, _, raw = gateway.request("GET", "/metrics")
        text = raw.decode()
        assert status == 200
        # chats one after the other: each bridge had as little outstanding work as the other, so both served
        assert all(metric(text, "exo_rk_pool_requests_total", bridge=b.url) >= 1 for b in bridges), text
        assert all(metric(text, "exo_rk_pool_bridge_up", bridge=b.url) == 1 for b in bridges)
        assert metric(text, "exo_rk_pool_model_loads_total") == 0

        for b in bridges:
            b.kill(signal.SIGKILL)
        # a client with a 10 s timeout gets its answer: the gateway does not wait for a bridge to come back
        status, body = gateway.post_json("/v1/chat/completions", CHAT, timeout=10)
        assert status == 503, body
        assert body["error"]["code"] == "bridge_unavailable" and "bridges up" in body["error"]["message"]
        text = gateway.request("GET", "/metrics")[2].decode()
        assert all(metric(text, "exo_rk_pool_bridge_up", bridge=b.url) == 0 for b in bridges)
        assert metric(text, "exo_rk_pool_ejections_total") == 2

        bridges[0].restart()
        wait_for(lambda: gateway.post_json("/v1/chat/completions", CHAT, timeout=10)[0] == 200, timeout=20,
                 what="the restarted bridge to serve chats again")
