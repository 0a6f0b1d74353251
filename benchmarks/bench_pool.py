"""Request-level scaling over several boards: ``BridgePool`` in front of 1, 2 and 4 sim bridges (RK3588
Qwen2.5-1.5B profile, time-scaled) under a closed-loop load, and the pool against round-robin with two
models in play. Everything runs side by side in one run; the table reports ratios and counts."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import requests

from exo_rk.client import BridgeClient, GenerationParams, StreamEnd, TokenEvent
from exo_rk.pool import BridgePool
from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes.sim import PROFILES, write_sim_model
from rkllama_bridge.tokenizer import ChatTokenizer

from .common import percentile, table

PROFILE = "qwen2.5-1.5b-rk3588"
SPEEDUP = 4.0  # the board's timings divided by this, so a run takes seconds (ratios are unaffected)
MODELS = ("bench-a", "bench-b")
PROMPT_TOKENS = 64
NEW_TOKENS = 64
CLIENTS_PER_BRIDGE = 2  # one request running on each board's NPU, one waiting: the boards never idle
REQUESTS_PER_CLIENT = 6


def _store(root: Path, tokenizer_dir: Path) -> Path:
    for name in MODELS:
        write_sim_model(root, name, tokenizer_dir, NUM_CTX=4096, SIM_REPLY_TOKENS=4 * NEW_TOKENS)
    return root


class Bridges:
    """N sim bridge processes on loopback, started in parallel."""

    def __init__(self, store: Path, tmp: Path, n: int, preload: Sequence[str]):
        p = PROFILES[PROFILE]
        self.argv = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(store),
                     "--runtime", "sim", "--sim-profile", PROFILE,
                     "--sim-decode-tok-s", str(p.decode_tok_s * SPEEDUP),
                     "--sim-prefill-ms-per-token", str(p.prefill_ms_per_token / SPEEDUP),
                     "--sim-load-s", str(p.load_s / SPEEDUP), "--queue-max", "64", "--log-level", "WARNING",
                     *itertools.chain.from_iterable(("--preload", m) for m in preload)]
        self.port_files = [tmp / f"port-{time.monotonic_ns()}-{i}" for i in range(n)]
        self.procs: List[subprocess.Popen] = []
        self.urls: List[str] = []

    def __enter__(self) -> "Bridges":
        self.procs = [subprocess.Popen(self.argv + ["--port", "0", "--port-file", str(f)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for f in self.port_files]
        with ThreadPoolExecutor(len(self.procs)) as ex:
            self.urls = list(ex.map(self._wait, self.port_files))
        return self

    @staticmethod
    def _wait(port_file: Path) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                url = f"http://127.0.0.1:{port_file.read_text().strip()}"
                try:
                    if requests.get(url + "/health", timeout=2).ok:
                        return url
                except requests.ConnectionError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("a bridge did not start")

    def loads(self) -> int:
        """(bridge, model) pairs loaded: every load a bridge did (nothing is unloaded here)."""
        return sum(len(requests.get(u + "/api/ps", timeout=5).json()["models"]) for u in self.urls)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(30)


class RoundRobin:
    """The baseline: each request to the next bridge in turn, whatever it has loaded."""

    def __init__(self, urls: Sequence[str]):
        self.clients = [BridgeClient(u) for u in urls]
        self._next = itertools.cycle(self.clients)

    def stream(self, model, ids, params):
        return next(self._next).stream(model, ids, params)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


async def _closed_loop(backend, prompt: List[int], models: Callable[[int], str], clients: int) -> Dict:
    """``clients`` loops, each sending its next request when the previous one ended."""
    latencies: List[float] = []
    tokens = 0

    async def client(i: int) -> None:
        nonlocal tokens
        model = models(i)
        for _ in range(REQUESTS_PER_CLIENT):
            sent = time.perf_counter()
            n, end = 0, None
            async for ev in backend.stream(model, prompt, GenerationParams(max_new_tokens=NEW_TOKENS)):
                if isinstance(ev, TokenEvent):
                    n += 1
                elif isinstance(ev, StreamEnd):
                    end = ev
            if end is None or end.finish_reason not in ("stop", "length") or n != NEW_TOKENS:
                raise RuntimeError(f"request ended badly: {end} after {n} tokens")
            latencies.append(time.perf_counter() - sent)
            tokens += n

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    return {"req_s": len(latencies) / wall, "tok_s": tokens / wall, "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "n": len(latencies)}


async def _measure(make_backend, prompt, models, clients) -> Dict:
    backend = make_backend()
    try:
        return await _closed_loop(backend, prompt, models, clients)
    finally:
        await backend.close()


def _scaling(store: Path, tmp: Path, prompt: List[int]) -> str:
    rows, base = [], None
    one_model = lambda _i: MODELS[0]  # noqa: E731 - a one-line choice of model per client
    for n, label in ((1, "1 bridge, plain BridgeClient (no pool)"), (1, "1 bridge"), (2, "2 bridges"),
                     (4, "4 bridges")):
        with Bridges(store, tmp, n, preload=[MODELS[0]]) as bridges:
            if label.endswith("(no pool)"):
                make = lambda: BridgeClient(bridges.urls[0])  # noqa: E731
            else:
                make = lambda: BridgePool(bridges.urls)  # noqa: E731
            r = asyncio.run(_measure(make, prompt, one_model, CLIENTS_PER_BRIDGE * n))
        if label == "1 bridge":
            base = r["tok_s"]
        eff = "" if base is None or label.endswith("(no pool)") else f"{100 * r['tok_s'] / (n * base):.1f} %"
        rows.append([label, CLIENTS_PER_BRIDGE * n, r["n"], round(r["tok_s"], 1), round(r["req_s"], 2),
                     round(r["p50"], 2), round(r["p95"], 2), eff])
    header = ["setup", "clients", "requests", "tok/s", "req/s", "p50 latency s", "p95 latency s",
              "scaling efficiency"]
    return table(header, rows)


def _two_models(store: Path, tmp: Path, prompt: List[int]) -> str:
    rows = []
    n = 4
    by_client = lambda i: MODELS[i % 2]  # noqa: E731 - half the clients on each model
    for per_bridge, label in itertools.product((1, CLIENTS_PER_BRIDGE), ("round-robin", "BridgePool")):
        clients = per_bridge * n
        with Bridges(store, tmp, n, preload=[]) as bridges:
            kind = RoundRobin if label == "round-robin" else BridgePool
            r = asyncio.run(_measure(lambda: kind(bridges.urls), prompt, by_client,  # noqa: B023 - used at once
                                     clients))
            loads = bridges.loads()
        rows.append([label, n, clients, r["n"], loads, loads - len(MODELS), round(r["tok_s"], 1),
                     round(r["p50"], 2), round(r["p95"], 2)])
    header = ["dispatch", "bridges", "clients", "requests", "model loads", "loads beyond the first per model",
              "tok/s", "p50 latency s", "p95 latency s"]
    return table(header, rows)


def run() -> str:
    tokenizer_dir = ensure_default_model()
    tok = ChatTokenizer(tokenizer_dir)
    prompt = tok.encode("benchmark prompt " * PROMPT_TOKENS)[:PROMPT_TOKENS]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = _store(tmp / "models", tokenizer_dir)
        scaling = _scaling(store, tmp, prompt)
        two = _two_models(store, tmp, prompt)
    p = PROFILES[PROFILE]
    notes = " ".join([
        f"Sim bridges with the `{PROFILE}` profile ({p.decode_tok_s} tok/s, TTFT",
        f"{p.prefill_ms_per_token * 64:.0f} ms for 64 prompt tokens, {p.load_s:g} s model load),",
        f"all timings divided by {SPEEDUP:g}; one instance per bridge (one NPU).",
        f"Closed loop: {CLIENTS_PER_BRIDGE} clients per bridge, {REQUESTS_PER_CLIENT} requests each,",
        f"{PROMPT_TOKENS} prompt tokens, {NEW_TOKENS} new tokens. Scaling efficiency = tok/s with N bridges",
        "/ (N × tok/s with 1 bridge through the pool). Two-model runs: 4 bridges, nothing preloaded,",
        "half the clients on each model; a load beyond the first per model is a swap on a board that",
        "holds one model at a time. Caveat: the sim runs two loaded models of one bridge in parallel at",
        "full speed each, which a board's single NPU cannot; with 2 clients per bridge round-robin profits",
        "from that, so compare its tok/s there with care."])
    title = "### Bridge pool: scaling over boards, and model affinity vs round-robin"
    return f"{title}\n\n{scaling}\n\n{two}\n\n{notes}\n"
