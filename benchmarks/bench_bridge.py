"""Bridge overhead: the sim runtime called directly vs through the bridge's HTTP stream with a real
client, side by side in one run. Reports decode tok/s and TTFT ratios, and the per-token cost in µs
measured on an unthrottled sim (where the runtime itself costs nothing)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import requests

from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.runtimes.base import GenerationParams, ModelSpec
from rkllama_bridge.runtimes.sim import SimRuntime, write_sim_model
from rkllama_bridge.tokenizer import ChatTokenizer

from .common import median, start_server, table

MODEL = "bench-sim"
PROMPT_TOKENS = 64


def _model_dir(root: Path, tokenizer_dir: Path, reply_tokens: int) -> Path:
    return write_sim_model(root, MODEL, tokenizer_dir, NUM_CTX=8192, SIM_REPLY_TOKENS=reply_tokens)


def _direct(model_dir: Path, tok: ChatTokenizer, profile: str, overrides: dict, prompt, n: int) -> dict:
    runtime = SimRuntime(profile, tokenizer_for=lambda _: tok, **overrides)
    spec = ModelSpec(MODEL, model_dir, None, 8192, tuple(tok.eos_token_ids), tok.vocab_size,
                     {"SIM_REPLY_TOKENS": str(n)})
    handle = runtime.load(spec)
    stamps = []
    started = time.perf_counter()
    handle.generate(prompt, GenerationParams(max_new_tokens=n), lambda _t: stamps.append(time.perf_counter()))
    return {"ttft_s": stamps[0] - started, "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "total_s": stamps[-1] - started, "n": len(stamps)}


def _http(url: str, prompt, n: int) -> dict:
    stamps = []
    started = time.perf_counter()
    with requests.post(url + "/v1/generate", json={"model": MODEL, "prompt_token_ids": prompt, "max_new_tokens": n},
                       stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line and b'"token_id"' in line[:12]:
                stamps.append(time.perf_counter())
    return {"ttft_s": stamps[0] - started, "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "total_s": stamps[-1] - started, "n": len(stamps)}


def _start_bridge(models: Path, profile: str, overrides: dict, tmp: Path) -> tuple:
    argv = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(models), "--runtime", "sim",
            "--sim-profile", profile, "--log-level", "WARNING", "--preload", MODEL, "--no-images"]
    for key, value in overrides.items():
        argv += [f"--sim-{key.replace('_', '-')}", str(value)]
    return start_server(argv, tmp, f"bridge-{profile}-{len(overrides)}")


def run(repeats: int = 5) -> str:
    tokenizer_dir = ensure_default_model()
    tok = ChatTokenizer(tokenizer_dir)
    prompt = (tok.encode("benchmark prompt " * 64))[:PROMPT_TOKENS]
    cases = [("qwen2-0.5b-rk3588", {"decode_tok_s": 40.0}, 200, "RK3588 profile at 40 tok/s"),
             ("instant", {}, 2000, "unthrottled sim")]
    rows, per_token = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for profile, overrides, n, label in cases:
            models = tmp / f"models-{profile}"
            model_dir = _model_dir(models, tokenizer_dir, n)
            proc, url = _start_bridge(models, profile, overrides, tmp)
            try:
                _http(url, prompt, 8)  # warm-up: connection, first request
                direct, http = [], []
                for _ in range(repeats):  # interleaved, so drift hits both sides alike
                    direct.append(_direct(model_dir, tok, profile, overrides, prompt, n))
                    http.append(_http(url, prompt, n))
            finally:
                proc.terminate()
                proc.wait(30)
            d_tok, h_tok = median(x["tok_s"] for x in direct), median(x["tok_s"] for x in http)
            d_ttft, h_ttft = median(x["ttft_s"] for x in direct), median(x["ttft_s"] for x in http)
            d_total, h_total = median(x["total_s"] for x in direct), median(x["total_s"] for x in http)
            per_token[label] = (h_total - d_total) / n * 1e6
            rows.append([label, n, round(d_tok, 1), round(h_tok, 1), round(h_tok / d_tok, 4),
                         round(d_ttft * 1000, 2), round(h_ttft * 1000, 2), round(per_token[label], 1)])
    header = ["case", "tokens", "direct tok/s", "HTTP tok/s", "ratio", "direct TTFT ms", "HTTP TTFT ms",
              "overhead µs/token"]
    return ("### Bridge overhead (sim runtime direct vs HTTP native stream)\n\n" + table(header, rows) +
            f"\n\nMedian of {repeats} interleaved runs, prompt {PROMPT_TOKENS} tokens, client `requests` streaming "
            "`/v1/generate` on loopback.\n")


if __name__ == "__main__":
    print(run())
