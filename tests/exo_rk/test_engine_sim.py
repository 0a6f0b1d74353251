"""RKLLMInferenceEngine driven like exo's node, against a real bridge process on the sim runtime."""

from __future__ import annotations

import asyncio
import json

import pytest

from exo_rk import errors
from exo_rk.client import BridgeClient
from exo_rk.compat import Shard
from exo_rk.engine import RKLLMInferenceEngine
from tests.exo_rk.bridges import LONG_SIM_MODEL, SIM_MODEL, settings_for, sim_cards
from tests.exo_rk.harness import chat, node_generate, shard_for, template, until

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant. Answer in French."},
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "And of Spain? Reply with one word, «s'il vous plaît» 🙂"},
]


@pytest.fixture
async def engine(sim_bridge, exo_home):
    eng = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home), cards=sim_cards())
    yield eng
    await eng.cleanup()


def _busy(bridge, model: str) -> int:
    status, health = bridge.get_json("/health")
    assert status == 200
    return sum(m.get("busy", 0) for m in health["models"] if m["name"] == model)


async def test_multi_turn_with_system_prompt_reaches_the_runtime_intact(engine, sim_bridge):
    shard = shard_for(engine, SIM_MODEL)
    await engine.ensure_shard(shard)
    prompt = template(engine, CONVERSATION)
    run = await node_generate(engine, shard, prompt)
    assert run.finished_by_eos and len(run.tokens) > 1

    recorded = [r for r in sim_bridge.recorded() if r["model"] == SIM_MODEL]
    assert recorded, "the bridge recorded no generation"
    sent = recorded[-1]["prompt_token_ids"]
    # The bridge's own chat template over the same messages gives the very same ids: every turn and the
    # system prompt arrived once, templated once.
    status, bridge_ids = sim_bridge.post_json(
        "/v1/tokenize", {"model": SIM_MODEL, "messages": CONVERSATION, "add_generation_prompt": True}
    )
    assert status == 200
    assert sent == bridge_ids["token_ids"]
    text = engine.tokenizer.decode(sent)
    for message in CONVERSATION:
        assert text.count(message["content"]) == 1


async def test_reply_matches_the_bridge_stream_token_for_token(engine, sim_bridge):
    run, text = await chat(engine, SIM_MODEL, CONVERSATION)
    ids = template(engine, CONVERSATION)
    prompt_ids = engine.tokenizer.encode(ids, add_special_tokens=False)
    async with BridgeClient(sim_bridge.url) as client:
        from exo_rk.client import GenerationParams, TokenEvent

        direct = [
            e.token_id
            async for e in client.stream(SIM_MODEL, prompt_ids, GenerationParams(temperature=0.0))
            if isinstance(e, TokenEvent)
        ]
    assert run.tokens[:-1] == direct
    assert run.tokens[-1] == engine.tokenizer.eos_token_id
    assert text == engine.tokenizer.decode(direct, skip_special_tokens=True)


async def test_first_token_arrives_while_the_bridge_is_still_generating(engine, sim_bridge):
    shard = shard_for(engine, LONG_SIM_MODEL)
    await engine.ensure_shard(shard)
    prompt = template(engine, [{"role": "user", "content": "Tell me a long story."}])
    result, _ = await engine.infer_prompt("order-1", shard, prompt, {})
    first = (await engine.sample(result, temp=0.0)).item()
    assert first != engine.tokenizer.eos_token_id
    # Returned token 1 of 600 and the bridge still holds the request: the engine did not wait for the end.
    session = engine.request_state("order-1")
    assert session.reader_running
    assert _busy(sim_bridge, LONG_SIM_MODEL) >= 1
    engine.abort("order-1")
    await until(
        lambda: _busy(sim_bridge, LONG_SIM_MODEL) == 0, timeout=10, what="the bridge to free the handle"
    )


async def test_concurrent_interleaved_requests_keep_their_streams_apart(engine, sim_bridge):
    shard = shard_for(engine, SIM_MODEL)
    await engine.ensure_shard(shard)
    # Different prompt lengths + seeds: the sim starts its reply at an offset fixed by both, so each request
    # has its own expected token sequence.
    prompts = {
        f"req-{i}": template(engine, [{"role": "user", "content": "word " * (i + 1)}]) for i in range(8)
    }
    expected = {}
    async with BridgeClient(sim_bridge.url) as client:
        from exo_rk.client import GenerationParams, TokenEvent

        for rid, prompt in prompts.items():
            ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
            seed = int(rid.split("-")[1])
            expected[rid] = [
                e.token_id
                async for e in client.stream(SIM_MODEL, ids, GenerationParams(seed=seed))
                if isinstance(e, TokenEvent)
            ]
    assert len({tuple(v) for v in expected.values()}) > 1

    async def one(rid: str):
        seed = int(rid.split("-")[1])
        state = {"rkllm_params": {"seed": seed}}
        # Yield to the other requests between every call, like the node's create_task forwarding does.
        return await node_generate(
            engine,
            shard,
            prompts[rid],
            request_id=rid,
            inference_state=state,
            on_token=lambda run, tok: asyncio.sleep(0),
        )

    runs = await asyncio.gather(*(one(rid) for rid in prompts))
    for run in runs:
        assert run.tokens[:-1] == expected[run.request_id], run.request_id
        assert run.finished_by_eos


async def test_request_cap_evicts_the_least_recently_used(sim_bridge, exo_home):
    eng = RKLLMInferenceEngine(
        None, settings=settings_for(sim_bridge.url, exo_home, max_requests=2), cards=sim_cards()
    )
    try:
        shard = shard_for(eng, LONG_SIM_MODEL)
        await eng.ensure_shard(shard)
        prompt = template(eng, [{"role": "user", "content": "Go on."}])
        for rid in ("a", "b", "c"):
            await eng.infer_prompt(rid, shard, prompt, {})
        assert eng.request_ids() == ["b", "c"]
        for rid in ("b", "c"):
            eng.abort(rid)
        await until(
            lambda: _busy(sim_bridge, LONG_SIM_MODEL) == 0, timeout=10, what="all streams to be closed"
        )
    finally:
        await eng.cleanup()


async def test_partial_shard_is_refused_with_a_clear_message(engine):
    with pytest.raises(errors.PartialShardError, match="whole models"):
        await engine.ensure_shard(Shard(SIM_MODEL, 0, 14, 30))


async def test_unknown_bridge_model_fails_before_the_first_token(sim_bridge, exo_home):
    cards = sim_cards()
    cards["ghost"] = cards[SIM_MODEL].__class__("ghost", "no-such-model", cards[SIM_MODEL].hf_repo, 30)
    eng = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home), cards=cards)
    try:
        with pytest.raises(errors.ModelNotFound, match="404"):
            await eng.ensure_shard(shard_for(eng, "ghost"))
    finally:
        await eng.cleanup()


async def test_tokenizer_lands_in_exos_downloads_layout(engine, exo_home):
    await engine.ensure_shard(shard_for(engine, SIM_MODEL))
    local = exo_home / "downloads" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    config = json.loads((local / "tokenizer_config.json").read_text())
    # Readable by the transformers exo pins (4.x): template inside the config, a class it has.
    assert "<|im_start|>" in config["chat_template"]
    assert config["tokenizer_class"].endswith("Tokenizer") or config["tokenizer_class"].endswith(
        "TokenizerFast"
    )
    assert (local / "tokenizer.json").is_file()
