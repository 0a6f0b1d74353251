"""What the gateway red-team tests share: sim bridges and a gateway as real processes, and raw HTTP for
the requests no well-behaved client library would send."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from tests.conftest import write_sim_model
from tests.pool.conftest import PoolBridge
from tests.support import ServerProcess, bridge_argv

CHAT_MODEL = "chat-sim"  # says 4,000 tokens unless max_tokens stops it: 20 s at the test speed
DECODE_TOK_S = "200"


def write_store(root: Path, tokenizer_dir: Path) -> Path:
    write_sim_model(root, CHAT_MODEL, tokenizer_dir, SIM_REPLY_TOKENS=4000, MAX_NEW_TOKENS=4000, NUM_CTX=8192)
    return root


def sim_bridge(store: Path, *extra: str) -> PoolBridge:
    """A sim bridge process (not started; restartable on its port): instant prefill unless ``extra``
    says otherwise."""
    return PoolBridge(bridge_argv(store, "sim", "--sim-profile", "instant", "--sim-decode-tok-s", DECODE_TOK_S,
                                     "--sim-load-s", "0", "--no-images", "--log-level", "WARNING", *extra),
                         startup_timeout=60)


def gateway(servers: Sequence[str], exo_home: Path, env: Optional[Dict[str, str]] = None) -> ServerProcess:
    """An ``exo-rk serve`` process over ``servers`` (not started)."""
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--default-model", CHAT_MODEL]
    return ServerProcess(argv, env={"RKLLM_SERVERS": ",".join(servers), "EXO_HOME": str(exo_home),
                                    "RKLLM_SERVERS_FILE": "", **(env or {})}, startup_timeout=60)


def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> Tuple[int, Dict[str, str], bytes]:
    """Send ``data`` as is and read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def error_of(raw: bytes) -> dict:
    """The ``error`` object of a JSON error body (fails the test if the body is anything else)."""
    return json.loads(raw)["error"]
