"""TTFT and decode speed through ``RKLLMInferenceEngine`` (driven as exo's node drives it) vs the bridge's
native stream read directly with the same aiohttp client, side by side against one sim bridge process.

``python -m benchmarks bench_engine``
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from exo_rk.client import BridgeClient, GenerationParams, TokenEvent
from exo_rk.compat import full_shard
from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.model_cards import ModelCard
from exo_rk.settings import Settings
from rkllama_bridge.default_model import ensure_default_model
from rkllama_bridge.tokenizer import ChatTokenizer

from .bench_bridge import MODEL, PROMPT_TOKENS, _model_dir, _start_bridge
from .common import median, table


async def _raw(client: BridgeClient, prompt, n: int) -> dict:
    stamps = []
    started = time.perf_counter()
    async for event in client.stream(MODEL, prompt, GenerationParams(max_new_tokens=n)):
        if isinstance(event, TokenEvent):
            stamps.append(time.perf_counter())
    return {"ttft_s": stamps[0] - started, "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}


async def _engine(engine: RKLLMInferenceEngine, prompt, n: int) -> dict:
    """The node's loop: (1, N) call, then sample / ensure_shard / (1, 1) call until EOS."""
    import numpy as np

    shard = full_shard(MODEL, 1)
    rid, stamps = uuid.uuid4().hex, []
    state = {"rkllm_params": {"max_new_tokens": n}}
    started = time.perf_counter()
    result, state = await engine.infer_tensor(rid, shard, np.array([prompt]), state)
    while True:
        token = await engine.sample(result)
        await engine.ensure_shard(shard)
        if token.item() == engine.tokenizer.eos_token_id:
            break
        stamps.append(time.perf_counter())
        result, state = await engine.infer_tensor(rid, shard, token.reshape(1, -1), state)
    return {"ttft_s": stamps[0] - started, "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}


async def _case(url: str, exo_home: Path, prompt, n: int, repeats: int) -> dict:
    card = ModelCard(MODEL, MODEL, "bench/bench-sim", 1)
    engine = RKLLMInferenceEngine(
        None, settings=Settings(servers=(url,), exo_home=exo_home), cards={MODEL: card}
    )
    raw, eng = [], []
    async with BridgeClient(url) as client:
        await engine.ensure_shard(full_shard(MODEL, 1))
        await _raw(client, prompt, 8)  # warm-up
        await _engine(engine, prompt, 8)
        for _ in range(repeats):  # interleaved, so drift hits both alike
            raw.append(await _raw(client, prompt, n))
            eng.append(await _engine(engine, prompt, n))
    await engine.cleanup()
    summary = {key: median(r[key] for r in raw) for key in ("ttft_s", "tok_s")}
    summary.update({"eng_" + key: median(r[key] for r in eng) for key in ("ttft_s", "tok_s")})
    return summary


def run(repeats: int = 5) -> str:
    tokenizer_dir = ensure_default_model()
    prompt = ChatTokenizer(tokenizer_dir).encode("benchmark prompt " * 64)[:PROMPT_TOKENS]
    cases = [
        ("qwen2-0.5b-rk3588", {"decode_tok_s": 40.0}, 200, "RK3588 profile at 40 tok/s"),
        ("instant", {}, 2000, "unthrottled sim"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for profile, overrides, n, label in cases:
            models = tmp / f"models-{profile}"
            _model_dir(models, tokenizer_dir, n)
            proc, url = _start_bridge(models, profile, overrides, tmp)
            try:
                m = asyncio.run(_case(url, tmp / "exo-home", prompt, n, repeats))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append(
                (
                    label,
                    n,
                    m["ttft_s"] * 1000,
                    m["eng_ttft_s"] * 1000,
                    (m["eng_ttft_s"] - m["ttft_s"]) * 1000,
                    m["tok_s"],
                    m["eng_tok_s"],
                    m["eng_tok_s"] / m["tok_s"],
                )
            )
    return table(
        [
            "case",
            "tokens",
            "stream TTFT ms",
            "engine TTFT ms",
            "TTFT added ms",
            "stream tok/s",
            "engine tok/s",
            "ratio",
        ],
        rows,
    )


if __name__ == "__main__":
    print(run())
