"""The engine when a bridge dies mid-stream, and the one-shot mode forced on a bridge (stock servers:
test_stock_peers.py)."""

from __future__ import annotations

import asyncio

import pytest

from exo_rk.engine import RKLLMInferenceEngine
from tests.exo_rk.bridges import LONG_SIM_MODEL, SIM_MODEL, settings_for, sim_bridge_process, sim_cards
from tests.exo_rk.harness import chat, node_generate, shard_for, template

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Name another one, please."},
]


async def test_bridge_killed_mid_stream_ends_the_request_with_eos(sim_store, tmp_path, exo_home):
    with sim_bridge_process(sim_store, tmp_path) as bridge:
        eng = RKLLMInferenceEngine(
            None, settings=settings_for(bridge.url, exo_home, token_timeout=20), cards=sim_cards()
        )
        try:
            shard = shard_for(eng, LONG_SIM_MODEL)
            await eng.ensure_shard(shard)
            prompt = template(eng, [{"role": "user", "content": "A very long answer, please."}])

            def kill_after_three(run, token):
                if len(run.tokens) == 3:
                    bridge.kill()  # SIGKILL: no goodbye on the socket

            # The request must end on its own, well before the 20 s token timeout: the broken connection
            # is noticed at once.
            run = await asyncio.wait_for(node_generate(eng, shard, prompt, on_token=kill_after_three), 10)
            assert run.finished_by_eos
            assert 3 <= len(run.tokens) < 4000
            assert eng.request_ids() == []
        finally:
            await eng.cleanup()


async def test_dead_bridge_before_the_first_token_is_a_clear_error(tmp_path, exo_home):
    eng = RKLLMInferenceEngine(
        None, settings=settings_for("http://127.0.0.1:9", exo_home, connect_timeout=2), cards=sim_cards()
    )
    from exo_rk import errors

    try:
        with pytest.raises(errors.BridgeUnavailable, match="unreachable"):
            await eng.ensure_shard(shard_for(eng, SIM_MODEL))
    finally:
        await eng.cleanup()


async def test_oneshot_mode_forced_on_a_bridge(sim_bridge, exo_home):
    eng = RKLLMInferenceEngine(
        None, settings=settings_for(sim_bridge.url, exo_home, mode="oneshot"), cards=sim_cards()
    )
    ref = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home), cards=sim_cards())
    try:
        eng.remember_messages("given-messages", CONVERSATION)
        shard = shard_for(eng, SIM_MODEL)
        await eng.ensure_shard(shard)
        run = await node_generate(eng, shard, template(eng, CONVERSATION), request_id="given-messages")
        _, expected = await chat(ref, SIM_MODEL, CONVERSATION)
        assert eng.tokenizer.decode(run.tokens[:-1], skip_special_tokens=True) == expected
    finally:
        await eng.cleanup()
        await ref.cleanup()


@pytest.mark.slow
async def test_host_runtime_gives_a_real_multi_turn_answer(host_bridge, exo_home):
    eng = RKLLMInferenceEngine(None, settings=settings_for(host_bridge.url, exo_home), cards=sim_cards())
    eng.bind_node_defaults(temperature=0.0)  # what the registration does with exo's --default-temp (0.0)
    try:
        messages = [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
        run, text = await chat(eng, "smollm2-135m-instruct", messages, max_generate_tokens=12)
        assert "Paris" in text
        # Second turn: what matters is that the whole conversation reached the runtime as one prompt.
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And of Germany?"}]
        run2, _ = await chat(eng, "smollm2-135m-instruct", messages, max_generate_tokens=2)
        assert len(run2.tokens) == 2
        sent = host_bridge.recorded()[-1]["prompt_token_ids"]
        status, ids = host_bridge.post_json(
            "/v1/tokenize",
            {"model": "smollm2-135m-instruct", "messages": messages, "add_generation_prompt": True},
        )
        assert status == 200 and sent == ids["token_ids"]
    finally:
        await eng.cleanup()


async def test_oneshot_mode_carries_the_sampling_parameters(sim_bridge, exo_home):
    """exo's temperature and the caller's sampling reach one-shot ``/generate`` as they reach the stream
    (before: the Modelfile's TEMPERATURE 0.7 was used, whatever exo asked)."""
    eng = RKLLMInferenceEngine(
        None, settings=settings_for(sim_bridge.url, exo_home, mode="oneshot"), cards=sim_cards()
    )
    eng.bind_node_defaults(temperature=0.0, max_generate_tokens=30)
    try:
        shard = shard_for(eng, SIM_MODEL)
        await eng.ensure_shard(shard)
        state = {"rkllm_params": {"top_p": 0.5, "top_k": 7}}
        run = await node_generate(eng, shard, template(eng, CONVERSATION), inference_state=state)
        assert len(run.tokens) > 2
        params = [r for r in sim_bridge.recorded() if r["model"] == SIM_MODEL][-1]["params"]
        assert (params["temperature"], params["top_p"], params["top_k"], params["max_new_tokens"]) == (0.0, 0.5, 7, 30)
    finally:
        await eng.cleanup()
