"""Soak: mixed chat and image load for a bounded time against two sim bridges, a gateway over them and an
image service on a tiny LCM model. Reports requests served, errors, and the RSS growth and open file
descriptors of every server process (start vs end, after a short settle). Not part of ``make test``.

    python -m benchmarks.soak --seconds 60
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import requests

from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes.sim import write_sim_model

from .common import start_server, table

MODEL = "soak-sim"
FAST_SIM = ["--sim-decode-tok-s", "400", "--sim-prefill-ms-per-token", "0.05", "--sim-load-s", "0"]


def _proc_stats(pid: int) -> Tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process, from /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _store(root: Path) -> Path:
    write_sim_model(root / "models", MODEL, ensure_default_model(), NUM_CTX=2048, MAX_NEW_TOKENS=48,
                    SIM_REPLY_TOKENS=32)
    return root / "models"


def _image_env(root: Path) -> Dict[str, str]:
    from image_engine.tiny_model import write_tiny_model

    model = write_tiny_model(root / "tiny-lcm", 64, 64, seed=1)
    modes = root / "modes.yaml"
    modes.write_text(f"default_mode: tiny\nmodes:\n  tiny:\n    model: {model}\n    default_size: \"64x64\"\n"
                     f"    default_steps: 2\n")
    return {"MODES_PATH": str(modes), "OUTPUTS_DIR": str(root / "outputs"), "NUM_WORKERS": "1",
            "SR_NUM_WORKERS": "1", "QUEUE_MAX": "8"}


def _requests_for(urls: Dict[str, str]) -> List[Tuple[str, str, str, dict]]:
    """(kind, method, url, json) choices of the mixed load."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me something."}], "max_tokens": 24}
    out = []
    for name in ("bridge-a", "bridge-b"):
        out += [("chat", "POST", urls[name] + "/v1/chat/completions", chat),
                ("chat-stream", "POST", urls[name] + "/v1/chat/completions", {**chat, "stream": True}),
                ("ollama", "POST", urls[name] + "/api/chat", {**chat, "stream": True}),
                ("bad", "POST", urls[name] + "/v1/chat/completions", {"messages": "nope"})]
    out += [("gateway", "POST", urls["gateway"] + "/v1/chat/completions", chat),
            ("image", "POST", urls["image"] + "/generate", {"prompt": "a red cube", "seed": 1}),
            ("image-json", "POST", urls["image"] + "/v1/images/generations", {"prompt": "a cat"}),
            ("health", "GET", urls["image"] + "/health", None)]
    return out


def _worker(choices, stop: threading.Event, counts: Counter, errors: Counter, seed: int) -> None:
    rng = random.Random(seed)
    with requests.Session() as session:
        while not stop.is_set():
            kind, method, url, body = rng.choice(choices)
            try:
                r = session.request(method, url, json=body, timeout=60, stream=True)
                r.content  # noqa: B018 - read the whole (possibly streamed) answer
                expected = 400 if kind == "bad" else 200
                counts[kind] += 1
                if r.status_code != expected:
                    errors[f"{kind}:{r.status_code}"] += 1
            except requests.RequestException as exc:
                errors[f"{kind}:{type(exc).__name__}"] += 1


def run(seconds: float = 60.0, clients: int = 6) -> str:
    with tempfile.TemporaryDirectory(prefix="exo-rk-soak-") as tmp_name:
        tmp = Path(tmp_name)
        store = _store(tmp)
        bridge = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(store), "--runtime", "sim",
                  "--host", "127.0.0.1", "--log-level", "WARNING", "--preload", MODEL, *FAST_SIM]
        procs, urls = {}, {}
        try:
            for name in ("bridge-a", "bridge-b"):
                procs[name], urls[name] = start_server(bridge, tmp, name)
            procs["gateway"], urls["gateway"] = start_server(
                [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--default-model", MODEL,
                 "--bridge", urls["bridge-a"], "--bridge", urls["bridge-b"], "--log-level", "WARNING"],
                tmp, "gateway", {"EXO_HOME": str(tmp / "exo-home"), "RKLLM_SERVERS": ""})
            procs["image"], urls["image"] = start_server(
                [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1"], tmp, "image",
                _image_env(tmp))
            choices = _requests_for(urls)
            # one warm-up round so start-up allocations are not counted as growth
            _worker_once(choices)
            before = {name: _proc_stats(p.pid) for name, p in procs.items()}
            stop, counts, errors = threading.Event(), Counter(), Counter()
            threads = [threading.Thread(target=_worker, args=(choices, stop, counts, errors, i), daemon=True)
                       for i in range(clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            stop.wait(seconds)
            stop.set()
            for t in threads:
                t.join(timeout=90)
            elapsed = time.monotonic() - started
            time.sleep(2.0)  # let keep-alive connections and finished jobs close before counting descriptors
            after = {name: _proc_stats(p.pid) for name, p in procs.items()}
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    total = sum(counts.values())
    rows = [[name, f"{before[name][0] / 1024:.1f}", f"{after[name][0] / 1024:.1f}",
             f"{(after[name][0] - before[name][0]) / 1024:+.1f}", before[name][1], after[name][1]]
            for name in procs]
    lines = [f"soak: {elapsed:.0f} s, {clients} clients, {total} requests ({total / elapsed:.1f}/s), "
             f"unexpected answers {sum(errors.values())}",
             "by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             "errors: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"), "",
             table(["process", "RSS start MiB", "RSS end MiB", "growth MiB", "fds start", "fds end"], rows)]
    return "\n".join(lines)


def _worker_once(choices) -> None:
    with requests.Session() as session:
        for _kind, method, url, body in choices:
            session.request(method, url, json=body, timeout=60).content  # noqa: B018


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()
    print(run(args.seconds, args.clients), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
