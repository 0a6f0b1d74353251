"""Drives ``RKLLMInferenceEngine`` exactly as legacy exo's node and ChatGPT API do (exo 5f18faec1):

the API templates the messages with the tokenizer it resolved (``apply_chat_template(tokenize=False,
add_generation_prompt=True)``), the node calls ``infer_prompt`` (encode, then ``infer_tensor`` with a
(1, N) array), passes every output through ``sample(result, temp=...)``, calls ``ensure_shard``, appends
``token.item()`` and stops at ``engine.tokenizer.eos_token_id`` or ``max_generate_tokens``; otherwise it
forwards ``token.reshape(1, -1)`` to the next ``infer_tensor`` call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from exo_rk.compat import Shard, full_shard


@dataclass
class NodeRun:
    request_id: str
    prompt: str
    tokens: List[int] = field(default_factory=list)
    finished_by_eos: bool = False


def template(engine, messages: list) -> str:
    return engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def shard_for(engine, model_id: str) -> Shard:
    return full_shard(model_id, engine.card_for(model_id).layers)


async def node_generate(
    engine,
    shard: Shard,
    prompt: str,
    *,
    max_generate_tokens: int = 1024,
    temperature: float = 0.0,
    request_id: Optional[str] = None,
    on_token: Optional[Callable[[NodeRun, int], object]] = None,
    inference_state: Optional[dict] = None,
) -> NodeRun:
    """One request through the node's loop; ``on_token`` runs after each token (may await)."""
    run = NodeRun(request_id or str(uuid.uuid4()), prompt)
    result, state = await engine.infer_prompt(run.request_id, shard, prompt, inference_state or {})
    while True:
        token = await engine.sample(result, temp=temperature)
        await engine.ensure_shard(shard)
        run.tokens.append(token.item())
        is_eos = token.item() == engine.tokenizer.eos_token_id
        if on_token is not None:
            maybe = on_token(run, token.item())
            if hasattr(maybe, "__await__"):
                await maybe
        if is_eos or len(run.tokens) >= max_generate_tokens:
            run.finished_by_eos = is_eos
            return run
        result, state = await engine.infer_tensor(run.request_id, shard, token.reshape(1, -1), state)


async def chat(engine, model_id: str, messages: list, **kw) -> tuple:
    """Template like exo's API, run the node loop; returns (run, decoded text without the EOS)."""
    shard = shard_for(engine, model_id)
    await engine.ensure_shard(shard)
    run = await node_generate(engine, shard, template(engine, messages), **kw)
    body = run.tokens[:-1] if run.finished_by_eos else run.tokens
    return run, engine.tokenizer.decode(body, skip_special_tokens=True)


def as_array(ids) -> np.ndarray:
    return np.array(ids, dtype=np.int64).reshape(1, -1)


async def until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
):
    """``tests.support.wait_for`` for coroutines: polls without blocking the event loop the engine runs on.
    ``condition`` may be a plain function (run in a thread, so blocking HTTP is fine) or a coroutine
    function."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = (
                await condition()
                if inspect.iscoroutinefunction(condition)
                else await asyncio.to_thread(condition)
            )
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the condition may fail until it holds
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
    )
