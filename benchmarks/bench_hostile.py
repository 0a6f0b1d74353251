"""The exo side under hostile conditions (issue 16), measured against real sim bridge processes and a
real gateway process, with the pool's and the gateway's default settings:

- a board frozen (SIGSTOP) during prefill while a second board is idle: seconds from the freeze to the
  complete reply (a client that gives up after ``FROZEN_GIVE_UP`` s);
- the longest pause of a concurrent stream while an 8 MB and a 1 MB prompt arrive at the gateway;
- how long the board keeps generating after a client hangs up a non-streamed request;
- seconds from a restarted bridge answering ``/health`` to the pool using it again;
- what the gateway answers to hostile requests (status, content type, error type).

Run on two versions side by side (e.g. an export of an older commit on ``PYTHONPATH``) to get a
before/after table; nothing here depends on code that only one version has.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import requests

from exo_rk.client import GenerationParams, StreamEnd
from exo_rk.pool import BridgePool
from exo_rk.settings import Settings
from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes.sim import write_sim_model

from .common import median, start_server, table

MODEL = "hostile-sim"
FROZEN_GIVE_UP = 60.0
LONG_PROMPT = list(range(1000, 1300))  # 60 s of prefill at 200 ms per token: it is frozen mid-way
DOWN_S = (24.0, 27.5, 31.0)  # how long the bridge stays down before it is restarted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> Optional[float]:
    """Seconds until ``condition()`` holds, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(step)
    return None


class Bridge:
    """A sim bridge process on a fixed loopback port, so it can be restarted where it was."""

    def __init__(self, store: Path, tmp: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(store), "--runtime", "sim",
                     "--sim-profile", "instant", "--sim-decode-tok-s", "200", "--sim-load-s", "0", "--no-images",
                     "--preload", MODEL, "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(self.port),
                     *extra]
        self.log = open(tmp / f"bridge-{self.port}.log", "ab")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Bridge":
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log)
        if _until(self.healthy, 60) is None:
            raise RuntimeError(f"bridge on {self.port} did not start")
        return self

    def healthy(self) -> bool:
        return requests.get(self.url + "/health", timeout=1).ok

    def active(self) -> int:
        return requests.get(self.url + "/health", timeout=2).json()["active"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(30)


async def _stream_on(pool: BridgePool, prompt: List[int]) -> bool:
    events = pool.stream(MODEL, prompt, GenerationParams(max_new_tokens=20, temperature=0))
    try:
        async for event in events:
            if isinstance(event, StreamEnd):
                return event.finish_reason in ("stop", "length")
    except Exception:  # noqa: BLE001 - a failed request is a result here
        return False
    finally:
        await events.aclose()
    return False


async def _frozen_board(store: Path, tmp: Path) -> str:
    frozen = Bridge(store, tmp, "--sim-prefill-ms-per-token", "200").start()
    healthy = Bridge(store, tmp).start()
    pool = BridgePool.from_settings(Settings(servers=(frozen.url, healthy.url)))
    try:
        request = asyncio.create_task(_stream_on(pool, LONG_PROMPT))
        await asyncio.to_thread(_until, lambda: frozen.active() == 1, 30)
        frozen.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            ok = await asyncio.wait_for(request, FROZEN_GIVE_UP)
        except asyncio.TimeoutError:
            return f"> {FROZEN_GIVE_UP:.0f} (client gave up)"
        return f"{time.monotonic() - stopped:.2f}" + ("" if ok else " (failed)")
    finally:
        await pool.close()
        frozen.stop()
        healthy.stop()


async def _readmission(store: Path, tmp: Path) -> str:
    board = Bridge(store, tmp).start()
    pool = BridgePool.from_settings(Settings(servers=(board.url,)))
    delays = []
    try:
        await _stream_on(pool, LONG_PROMPT[:8])
        # down long enough for the probe backoff to reach its cap, then back at different phases of it
        for down_s in DOWN_S:
            board.stop()
            await asyncio.sleep(down_s)
            await asyncio.to_thread(board.start)
            back = await asyncio.to_thread(_until, lambda: pool.bridges()[0]["healthy"], 30)
            delays.append(back if back is not None else float("inf"))
    finally:
        await pool.close()
        board.stop()
    return f"{median(delays):.2f} (max {max(delays):.2f})"


def _longest_pause(gw: str, hostile: Callable[[], None]) -> Tuple[float, float]:
    """(longest pause between chunks of a stream while ``hostile()`` runs, seconds ``hostile()`` took)."""
    arrivals: List[float] = []
    done = threading.Event()

    def read() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk."}], "stream": True,
                "max_tokens": 3900}
        with requests.post(gw + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic())
                if done.is_set():
                    return

    reader = threading.Thread(target=read)
    reader.start()
    _until(lambda: len(arrivals) > 20, 30)
    start = time.monotonic()
    hostile()
    end = time.monotonic()
    done.set()
    reader.join(120)
    edges = [start, *[t for t in arrivals if start <= t <= end], end]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False)), end - start


def _big_prompt(gw: str, chars: int) -> Callable[[], None]:
    words = " ".join(f"word{i % 997}" for i in range(chars // 8 + 1))[:chars]
    body = {"model": MODEL, "messages": [{"role": "user", "content": words}]}
    return lambda: requests.post(gw + "/v1/chat/completions", json=body, timeout=300)


def _hang_up(gw: str, bridge: Bridge) -> str:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Talk."}],
                       "max_tokens": 3900}).encode()
    sock = socket.create_connection(("127.0.0.1", int(gw.rsplit(":", 1)[1])))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    _until(lambda: bridge.active() == 1, 30)
    time.sleep(0.5)  # well into the reply, as a client that gives up would be
    sock.close()
    busy = _until(lambda: bridge.active() == 0, 30)
    return f"{busy:.2f}" if busy is not None else "> 30"


def _raw(gw: str, data: bytes) -> Tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", int(gw.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(data)
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:  # a server that keeps the connection open: what it sent is the answer
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next((v for k, _, v in (line.partition(": ") for line in lines[1:]) if k.lower() == "content-type"), "")
    return int(lines[0].split()[1]), ctype.split(";")[0], body


def _error_bodies(gw: str, dead_gw: str) -> List[Tuple[str, int, str, str]]:
    # a model with a built-in card: the gateway goes straight to the (unreachable) bridge
    chat = json.dumps({"model": "qwen2.5-1.5b-instruct-rkllm", "messages": [{"role": "user", "content": "Hi."}]})
    chat = chat.encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    cases = [
        ("100,000 nested [", gw, post + b"Content-Length: 100000\r\n\r\n" + b"[" * 100_000),
        ("duplicate Content-Length", gw, post + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}"),
        ("Content-Length + Transfer-Encoding", gw,
         post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("100 KB header", gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
         + b"a" * 100_000 + b"\r\n\r\n"),
        ("bad request line", gw, b"NOT HTTP\r\n\r\n"),
        ("bridge unreachable", dead_gw, post + b"Content-Length: %d\r\n\r\n%s" % (len(chat), chat)),
    ]
    rows = []
    for name, url, data in cases:
        status, ctype, body = _raw(url, data)
        try:
            error = json.loads(body)["error"]
            shown = f"{error.get('type')}: {error.get('message')}"
        except (ValueError, KeyError, TypeError):
            shown = body.decode("utf-8", "replace").replace("\n", " ")
        rows.append((name, status, ctype, shown[:150].replace("|", "/")))
    return rows


def _gateway(tmp: Path, servers: List[str], name: str) -> Tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--default-model", MODEL,
            "--log-level", "WARNING"]
    env = {"RKLLM_SERVERS": ",".join(servers), "EXO_HOME": str(tmp / f"home-{name}"), "RKLLM_SERVERS_FILE": ""}
    return start_server(argv, tmp, name, env=env)


def run() -> str:
    version = os.environ.get("BENCH_VERSION", "this tree")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp_dir:
        tmp = Path(tmp_dir)
        store = tmp / "models"
        write_sim_model(store, MODEL, ensure_default_model(), NUM_CTX=8192, MAX_NEW_TOKENS=4000,
                        SIM_REPLY_TOKENS=4000, HUGGINGFACE_PATH="Qwen/Qwen2.5-1.5B-Instruct")
        frozen = asyncio.run(_frozen_board(store, tmp))
        readmit = asyncio.run(_readmission(store, tmp))
        bridge = Bridge(store, tmp, "--instances", "2").start()
        gw_proc, gw = _gateway(tmp, [bridge.url], "gateway")
        dead_proc, dead_gw = _gateway(tmp, [f"http://127.0.0.1:{_free_port()}"], "dead")
        try:
            requests.post(gw + "/v1/chat/completions", timeout=120,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2})
            gap_8, took_8 = _longest_pause(gw, _big_prompt(gw, 8_000_000))
            gap_1, took_1 = _longest_pause(gw, _big_prompt(gw, 1_000_000))
            hang_up = _hang_up(gw, bridge)
            bodies = _error_bodies(gw, dead_gw)
        finally:
            for proc in (gw_proc, dead_proc):
                proc.terminate()
                proc.wait(30)
            bridge.stop()
    measures = table(["measure (" + version + ")", "seconds"], [
        ("frozen board during prefill → reply from the idle one", frozen),
        ("longest stream pause while an 8 MB prompt arrives", f"{gap_8:.3f} (prompt answered in {took_8:.2f})"),
        ("longest stream pause while a 1 MB prompt arrives", f"{gap_1:.3f} (prompt answered in {took_1:.2f})"),
        ("board still generating after a non-streamed hang-up", hang_up),
        (f"restarted bridge healthy → pool uses it (median of {len(DOWN_S)})", readmit),
    ])
    return measures + "\n\n" + table(["hostile request", "status", "content type", "error"], bodies)
