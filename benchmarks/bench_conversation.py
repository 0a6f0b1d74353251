"""Multi-turn prefill: time to first token of turn N of a growing conversation, with the bridge's prefix
reuse (each handle keeps its KV cache; a follow-up sends only its new tokens) and without it
(``--no-prefix-reuse``: the whole conversation is evaluated again every turn). Two bridges per runtime,
driven turn by turn alternately with the same questions through the OpenAI streaming route, on the sim
twin (RK3588 Qwen2.5-1.5B profile) and on the host runtime with the embedded default model."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import requests

from rkllama_bridge.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from rkllama_bridge.runtimes.sim import write_sim_model

from .common import median, start_server, table

SIM_MODEL = "conv-sim"
SIM_PROFILE = "qwen2.5-1.5b-rk3588"
QUESTION = ("Thank you. Now tell me one more fact about the history, the architecture, the food or the people of "
            "the city we talked about, in one short sentence, without repeating anything you said before.")


def _sim_store(root: Path, tokenizer_dir: Path, reply_tokens: int) -> Path:
    write_sim_model(root, SIM_MODEL, tokenizer_dir, NUM_CTX=8192, SIM_REPLY_TOKENS=reply_tokens)
    return root


def _start(models: Path, runtime: str, extra: list, tmp: Path, tag: str) -> tuple:
    argv = [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(models), "--runtime", runtime,
            "--log-level", "WARNING", "--no-restore", "--no-images", *extra]
    return start_server(argv, tmp, f"bridge-{tag}")


def _turn(url: str, model: str, messages: list, max_tokens: int) -> tuple:
    """(ttft seconds, reply text, usage) of one streamed chat turn."""
    body = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}}
    started, ttft, text, usage = time.perf_counter(), None, "", {}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    ttft = ttft or time.perf_counter() - started
                    text += piece
    return ttft, text, usage


def _conversation(urls: dict, model: str, turns: int, max_tokens: int) -> list:
    """Drive one conversation per bridge, alternating turn by turn; rows of per-turn measurements."""
    convs = {k: [{"role": "user", "content": "Which city is the capital of France? Answer briefly."}]
             for k in urls}
    rows = []
    for n in range(1, turns + 1):
        row = {"turn": n}
        for key, url in urls.items():
            ttft, text, usage = _turn(url, model, convs[key], max_tokens)
            row[key] = ttft
            row[f"{key}_prompt"] = usage.get("prompt_tokens", 0)
            row[f"{key}_cached"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            convs[key] += [{"role": "assistant", "content": text}, {"role": "user", "content": QUESTION}]
        rows.append(row)
    return rows


def _measure(models: Path, runtime: str, extra: list, model: str, turns: int, max_tokens: int, tmp: Path,
             repeats: int = 1) -> list:
    procs, urls = [], {}
    try:
        for key, flags in (("reuse", []), ("full", ["--no-prefix-reuse"])):
            proc, url = _start(models, runtime, extra + flags, tmp, f"{runtime}-{key}")
            procs.append(proc)
            urls[key] = url
        for url in urls.values():  # warm-up: load, first request
            _turn(url, model, [{"role": "user", "content": "warm-up"}], 2)
        runs = [_conversation(urls, model, turns, max_tokens) for _ in range(repeats)]
        return [{k: median(run[i][k] for run in runs) for k in runs[0][i]} for i in range(turns)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _rows(label: str, rows: list) -> list:
    first = rows[0]
    out = []
    for r in rows:
        out.append([label, int(r["turn"]), int(r["reuse_prompt"]), int(r["reuse_cached"]), round(r["reuse"] * 1000, 1),
                    round(r["full"] * 1000, 1), round(r["reuse"] / first["reuse"], 2),
                    round(r["full"] / first["full"], 2), round(r["full"] / r["reuse"], 2)])
    return out


def run(sim_turns: int = 8, host_turns: int = 5, host_repeats: int = 3) -> str:
    tokenizer_dir = ensure_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim_models = _sim_store(tmp / "sim-models", tokenizer_dir, 48)
        sim = _measure(sim_models, "sim", ["--sim-profile", SIM_PROFILE, "--sim-decode-tok-s", "200"], SIM_MODEL,
                       sim_turns, 48, tmp)
        host = _measure(tokenizer_dir.parent, "host", [], DEFAULT_MODEL_NAME, host_turns, 12, tmp, host_repeats)
    header = ["runtime", "turn", "prompt tokens", "cached (reuse)", "TTFT reuse ms", "TTFT full ms",
              "reuse turn N / turn 1", "full turn N / turn 1", "full / reuse"]
    return ("### Multi-turn TTFT with and without prefix reuse\n\n" + table(header, _rows("sim RK3588", sim) +
                                                                         _rows("host SmolLM2-135M", host)) +
            f"\n\nsim: profile {SIM_PROFILE} (prefill {378 / 64:.2f} ms/token), decode raised to 200 tok/s so "
            "the run is short (TTFT is prefill + one decode step); 48-token replies. host: SmolLM2-135M-Instruct "
            f"fp32 on the CPU, greedy, 12-token replies, median of {host_repeats} conversations per turn. Client: "
            "OpenAI streaming route, TTFT = first content chunk.\n")


if __name__ == "__main__":
    print(run())
