"""Stopping a bridge the way systemd and Kubernetes do: real processes, real signals, real streams."""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request

from ..conftest import SIM_MODEL
from ..support import wait_for

SLOW = ("--sim-profile", "instant", "--sim-decode-tok-s", "8")


def _stream(bridge, max_new_tokens: int, lines: list) -> threading.Thread:
    """A native NDJSON stream read on a thread; each parsed line is appended to ``lines``."""
    body = json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "Tell me a story"}],
                       "max_new_tokens": max_new_tokens}).encode()

    def read():
        req = urllib.request.Request(bridge.url + "/v1/generate", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                lines.append(json.loads(raw))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _exit_status(bridge, timeout: float = 30.0) -> int:
    wait_for(lambda: bridge.proc.poll() is not None, timeout=timeout, what="the bridge to exit")
    return bridge.proc.returncode


def test_sigterm_lets_a_running_reply_finish_refuses_new_ones_and_exits_0(start_bridge):
    bridge = start_bridge(*SLOW)
    assert bridge.get_json("/health")[1]["readiness"] == "ready"
    assert bridge.get_json("/health/ready") == (200, {"status": "ready"})
    lines: list = []
    reader = _stream(bridge, 12, lines)
    wait_for(lambda: lines, what="the first token")
    bridge.proc.send_signal(signal.SIGTERM)
    wait_for(bridge.refuses_connections, what="new connections to be refused")
    reader.join(timeout=30)
    done = lines[-1]
    assert done.get("done") is True and done["finish_reason"] in ("stop", "length"), done
    assert done["usage"]["completion_tokens"] == len(lines) - 1 > 1
    assert _exit_status(bridge) == 0
    log = bridge.log_tail(200)
    assert "Traceback" not in log and "not accepting new requests" in log


def test_replies_still_running_after_the_grace_period_end_with_finish_shutdown(start_bridge):
    bridge = start_bridge(*SLOW, "--shutdown-grace", "0.3")
    lines: list = []
    reader = _stream(bridge, 200, lines)
    wait_for(lambda: lines, what="the first token")
    bridge.proc.send_signal(signal.SIGTERM)
    reader.join(timeout=30)
    assert lines[-1].get("done") is True and lines[-1]["finish_reason"] == "shutdown", lines[-1]
    assert _exit_status(bridge) == 0
    assert "Traceback" not in bridge.log_tail(200)


def test_a_second_signal_exits_at_once(start_bridge):
    bridge = start_bridge(*SLOW)
    lines: list = []
    _stream(bridge, 200, lines)
    wait_for(lambda: lines, what="the first token")
    bridge.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "not accepting new requests" in bridge.log_tail(), what="the graceful stop to begin")
    bridge.proc.send_signal(signal.SIGINT)
    assert _exit_status(bridge, timeout=10) == 1
    assert "second signal" in bridge.log_tail() and "Traceback" not in bridge.log_tail(200)
    assert not lines[-1].get("done")  # the running reply did not get to finish
