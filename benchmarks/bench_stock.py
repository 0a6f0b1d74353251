"""The one-shot mode against a stock rkllama (the test double ``tests/exo_rk/stock_rkllama.py``, its own
process, paced like a board): exo's TTFT through each route of the protocol ladder vs the server's own TTFT
read directly, and the usage the engine reports vs a re-tokenization of the reply.

``python -m benchmarks bench_stock``
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np

from exo_rk.compat import full_shard
from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.model_cards import ModelCard
from exo_rk.settings import Settings
from exo_rk.tokenizer_store import make_portable, repo_dir
from rkllama_bridge.default_model import ensure_default_model

from .common import median, start_server, table

REPO = Path(__file__).resolve().parent.parent
DOUBLE = REPO / "tests" / "exo_rk" / "stock_rkllama.py"
MODEL, SMOL = "qwen-sim", "HuggingFaceTB/SmolLM2-135M-Instruct"
TTFT_S, INTERVAL_S, WORDS, RUNS = 0.3, 0.02, 20, 5
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me about rivers."}]


def _start(tmp: Path, name: str, *argv: str):
    """The stock double (a stock server has no ``/health``: ``/`` answers once it serves)."""
    return start_server([sys.executable, str(DOUBLE), "--ttft", str(TTFT_S), "--token-interval", str(INTERVAL_S),
                         "--reply-words", str(WORDS), *argv], tmp, name, timeout=30, ready_path="/")


async def _direct(url: str) -> float:
    """The server's own TTFT: its /v1/chat/completions stream read directly, to the first content chunk."""
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES,
                                                                  "stream": True}) as resp:
            async for line in resp.content:
                if b'"content": "' in line and b'"content": ""' not in line:
                    return time.perf_counter() - started
    raise RuntimeError("no content chunk")


async def _engine(engine: RKLLMInferenceEngine) -> dict:
    """exo's node loop; TTFT = until the first token of the reply is returned to the node."""
    shard = full_shard(MODEL, 30)
    await engine.ensure_shard(shard)
    prompt = engine.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    request_id = str(uuid.uuid4())
    started = time.perf_counter()
    result, state = await engine.infer_prompt(request_id, shard, prompt, {})
    ttft = time.perf_counter() - started
    tokens = []
    while True:
        token = await engine.sample(result)
        if token.item() == engine.tokenizer.eos_token_id:
            break
        tokens.append(token.item())
        result, state = await engine.infer_tensor(request_id, shard, np.asarray(token).reshape(1, -1), state)
    usage = engine.server_usage(request_id) or {}
    return {"ttft": ttft, "retokenized": len(tokens), "server": usage.get("completion_tokens")}


async def _measure(home: Path, urls: tuple, routes) -> dict:
    settings = Settings(servers=urls, exo_home=home, stock_routes=routes, mode="oneshot")
    cards = {MODEL: ModelCard(MODEL, MODEL, SMOL, 30, MODEL)}
    engine = RKLLMInferenceEngine(None, settings=settings, cards=cards)
    try:
        await _engine(engine)  # warm: discovery, tokenizer, route choice
        runs = [await _engine(engine) for _ in range(RUNS)]
    finally:
        await engine.cleanup()
    return {"ttft": median(r["ttft"] for r in runs), "retokenized": runs[-1]["retokenized"],
            "server": runs[-1]["server"]}


def run() -> str:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stock-") as tmp_name:
        tmp = Path(tmp_name)
        target = repo_dir(tmp / "home" / "downloads", SMOL)
        target.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(ensure_default_model() / name, target / name)
        make_portable(target)
        punchnox, p_url = _start(tmp, "punchnox")
        jfreed, j_url = _start(tmp, "jfreed", "--fork", "jfreed", "--refuse-system")
        try:
            direct = median([asyncio.run(_direct(p_url)) for _ in range(RUNS)])
            cases = [("/v1/chat/completions stream (rkllama 0.0.74)", (p_url,), ("openai",)),
                     ("/api/chat stream (rkllama 0.0.74)", (p_url,), ("ollama",)),
                     ("/generate stream (jfreed, system merged)", (j_url,), ("generate",)),
                     ("/generate whole, cached (one-shot)", (j_url,), ("oneshot",)),
                     ("pool of both servers, each one's best route", (p_url, j_url), ("openai", "ollama",
                                                                                       "generate", "oneshot"))]
            for label, urls, routes in cases:
                m = asyncio.run(_measure(tmp / "home", urls, routes))
                rows.append((label, round(direct * 1000, 1), round(m["ttft"] * 1000, 1),
                             round(m["ttft"] / direct, 2), m["server"], m["retokenized"]))
        finally:
            for proc in (punchnox, jfreed):
                proc.kill()
                proc.wait()
    header = ("route", "server TTFT ms", "exo TTFT ms", "ratio", "usage (server's count)",
              "re-tokenized count")
    return (f"Stock double at TTFT {TTFT_S * 1000:.0f} ms, {INTERVAL_S * 1000:.0f} ms per piece, {WORDS} pieces; "
            f"median of {RUNS} runs.\n\n" + table(header, rows))


if __name__ == "__main__":
    print(run())
