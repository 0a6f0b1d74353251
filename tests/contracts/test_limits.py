"""Limits every service enforces: slow clients cannot starve others, bodies are capped with a JSON 413,
and binding all interfaces without a token is warned about."""

from __future__ import annotations

import socket
import sys
import threading
import time

import requests

from rkllama_bridge.config import image_env_for_bridge
from tests.support import ServerProcess, wait_for

from .conftest import FAST_SIM, IMAGE_TOKEN, image_argv

SLOW_CLIENTS = 12
TRICKLE_S = 4.0


def _trickle(port: int, stop: threading.Event, opened: list) -> None:
    """Send a request's headers one byte at a time, never finishing them (a slowloris client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    opened.append(sock)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: "
    try:
        for byte in head + b"a" * 10_000:
            if stop.wait(0.05):
                return
            sock.sendall(bytes([byte]))
    except OSError:
        return  # the server may drop a client this slow; that is allowed


def test_slow_clients_do_not_starve_a_normal_one(start_bridge):
    bridge = start_bridge(*FAST_SIM, "--threads", "2")
    stop, opened = threading.Event(), []
    threads = [threading.Thread(target=_trickle, args=(bridge.port, stop, opened), daemon=True)
               for _ in range(SLOW_CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(opened) == SLOW_CLIENTS, timeout=10, what="the slow clients to connect")
        served, deadline = 0, time.monotonic() + TRICKLE_S
        while time.monotonic() < deadline:  # the slow clients keep trickling all along
            status, body = bridge.post_json("/v1/chat/completions", {
                "model": "qwen-sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                timeout=10)
            assert status == 200, body
            served += 1
        assert served > 0 and all(t.is_alive() for t in threads), "the slow clients were not slow all along"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        for sock in opened:
            sock.close()


def test_image_service_caps_json_bodies_with_a_json_413(image_server):
    big = b'{"prompt": "' + b"x" * (51 * 2**20 + 64 * 1024) + b'"}'  # past SR_MAX_UPLOAD_BYTES + framing
    r = requests.post(image_server.url + "/generate", data=big, timeout=30,
                      headers={"Authorization": f"Bearer {IMAGE_TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"]
    assert image_server.get_json("/health")[0] == 200


def test_binding_all_interfaces_without_a_token_is_warned_about(tiny_modes, sim_models_dir, tmp_path):
    from tests.support import bridge_argv

    env = {"MODES_PATH": str(tiny_modes), "OUTPUTS_DIR": str(tmp_path / "out"), "EXO_HOME": str(tmp_path),
           "RKLLM_SERVERS": ""}
    env.update(image_env_for_bridge(env))  # the bridge reads its image settings under its own prefix
    argvs = {"image": image_argv("--host", "0.0.0.0"),
             "gateway": [sys.executable, "-m", "exo_rk", "serve", "--host", "0.0.0.0", "--bridge", "127.0.0.1:9"],
             "bridge": bridge_argv(sim_models_dir, "sim") + ["--host", "0.0.0.0"]}
    for name, argv in argvs.items():
        with ServerProcess(argv, env=env, startup_timeout=60) as server:
            wait_for(lambda s=server: "without" in s.log_tail(), timeout=10, what=f"the {name} warning")
            assert "token" in server.log_tail().lower(), name
