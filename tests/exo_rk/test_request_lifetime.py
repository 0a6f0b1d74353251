"""How long a request's state lives in the engine, and how every early stop frees the board.

exo never tells the engine that a request ended: its node stops calling at EOS or at its own
``--max-generate-tokens``. The engine must keep a request alive while it waits on it (a slow prefill, a
bridge that stalls) and end the bridge's generation as soon as nobody will read it.
"""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest

from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.settings import Settings
from tests.exo_rk.bridges import LONG_SIM_MODEL, SIM_MODEL, settings_for, sim_bridge_process, sim_cards
from tests.exo_rk.harness import node_generate, shard_for, template, until
from tests.pool.runs import metric

PROMPT = [{"role": "user", "content": "Count to a thousand."}]


def _busy(bridge, model: str) -> int:
    status, health = bridge.get_json("/health")
    assert status == 200
    return sum(m.get("busy", 0) for m in health["models"] if m["name"] == model)


def _metric(bridge, name: str, **labels: str) -> float:
    status, _, raw = bridge.request("GET", "/metrics")
    assert status == 200
    return metric(raw.decode(), name, **labels)


def _last_params(bridge, model: str) -> dict:
    return [r for r in bridge.recorded() if r["model"] == model][-1]["params"]


def test_ttl_shorter_than_the_first_token_timeout_is_refused_at_start():
    with pytest.raises(ValueError, match=r"request_ttl \(2 s\) is shorter than first_token_timeout"):
        Settings.from_env({"RKLLM_REQUEST_TTL": "2", "RKLLM_FIRST_TOKEN_TIMEOUT": "120"})
    assert Settings.from_env({}).request_ttl >= Settings.from_env({}).first_token_timeout


@pytest.fixture
def own_bridge(sim_store, tmp_path):
    """A bridge of this test's own: it gets SIGSTOPped."""
    with sim_bridge_process(sim_store, tmp_path) as bridge:
        yield bridge
        bridge.proc.send_signal(signal.SIGCONT)


async def test_a_request_the_engine_waits_on_outlives_its_ttl(own_bridge, exo_home):
    """The bridge freezes mid-reply for longer than the TTL while exo's call waits: the request stays,
    and once the bridge resumes the whole reply arrives (before: evicted, the waiter left hanging)."""
    settings = settings_for(own_bridge.url, exo_home, request_ttl=1.0, first_token_timeout=1.0,
                            token_timeout=60.0)
    eng = RKLLMInferenceEngine(None, settings=settings, cards=sim_cards())
    frozen = asyncio.Event()
    try:
        shard = shard_for(eng, SIM_MODEL)
        await eng.ensure_shard(shard)

        async def freeze_after_two(run, token):
            if len(run.tokens) == 2:
                own_bridge.proc.send_signal(signal.SIGSTOP)
                frozen.set()

        run_task = asyncio.create_task(node_generate(eng, shard, template(eng, PROMPT), request_id="slow",
                                                     on_token=freeze_after_two))
        await frozen.wait()
        session = eng.request_state("slow")
        # Wait until the engine has drained what arrived before the freeze and is blocked on the bridge,
        # then for more than the TTL's worth of sweeps: the request must still be there.
        await until(lambda: session.waiting, timeout=30, what="the engine to wait on the frozen bridge")
        deadline = session.served_at + 3 * settings.request_ttl
        await until(lambda: time.monotonic() > deadline, timeout=30, what="three TTLs")
        assert "slow" in eng.request_ids()
        own_bridge.proc.send_signal(signal.SIGCONT)
        run = await asyncio.wait_for(run_task, 60)
        assert run.finished_by_eos and len(run.tokens) == 49  # the sim's 48 tokens, then EOS
        assert eng.finish_reason("slow") == "stop"
    finally:
        own_bridge.proc.send_signal(signal.SIGCONT)
        await eng.cleanup()


async def test_cancel_wakes_a_waiting_call_at_once(own_bridge, exo_home):
    eng = RKLLMInferenceEngine(None, settings=settings_for(own_bridge.url, exo_home, token_timeout=120),
                               cards=sim_cards())
    try:
        shard = shard_for(eng, LONG_SIM_MODEL)
        await eng.ensure_shard(shard)
        await eng.infer_prompt("stalled", shard, template(eng, PROMPT), {})
        own_bridge.proc.send_signal(signal.SIGSTOP)
        session = eng.request_state("stalled")
        waiter = asyncio.create_task(_drain(session))
        await until(lambda: session.waiting, timeout=30, what="a call blocked on the frozen bridge")
        eng.abort("stalled")
        # The waiter returns while the bridge is still frozen, long before the 120 s token timeout.
        assert await asyncio.wait_for(waiter, 30) is None
        assert own_bridge.proc.poll() is None
    finally:
        own_bridge.proc.send_signal(signal.SIGCONT)
        await eng.cleanup()


async def _drain(session):
    while True:
        token = await session.next_token()
        if token is None:
            return None


async def test_exos_token_limit_stops_the_bridge_at_the_same_token(sim_bridge, exo_home):
    """The hook hands the engine the node's --max-generate-tokens: the bridge generates exactly that many
    and the board is free the moment exo has its last token (before: it went on to the end of the reply)."""
    eng = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home), cards=sim_cards())
    eng.bind_node_defaults(temperature=0.0, max_generate_tokens=8)
    try:
        shard = shard_for(eng, LONG_SIM_MODEL)
        await eng.ensure_shard(shard)
        run = await node_generate(eng, shard, template(eng, PROMPT), max_generate_tokens=8, request_id="capped")
        assert len(run.tokens) == 8 and not run.finished_by_eos
        assert _last_params(sim_bridge, LONG_SIM_MODEL)["max_new_tokens"] == 8
        assert eng.request_ids() == [] and eng.finish_reason("capped") == "length"
        await until(lambda: _busy(sim_bridge, LONG_SIM_MODEL) == 0, timeout=10, what="the handle to be free")
    finally:
        await eng.cleanup()


async def test_buffered_tokens_without_calls_abort_the_generation(sim_bridge, exo_home):
    """With no node limit known (a node started without the hook's node patch), exo stopping at its limit
    shows as tokens piling up with no call: after ``call_idle_timeout`` the bridge's generation is aborted."""
    eng = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home, call_idle_timeout=0.5),
                               cards=sim_cards())
    try:
        shard = shard_for(eng, LONG_SIM_MODEL)
        await eng.ensure_shard(shard)
        aborts = _metric(sim_bridge, "bridge_aborts_total", model=LONG_SIM_MODEL)
        run = await node_generate(eng, shard, template(eng, PROMPT), max_generate_tokens=5, request_id="left")
        assert len(run.tokens) == 5
        await until(lambda: eng.finish_reason("left") == "abandoned", timeout=20, what="the idle deadline")
        await until(lambda: _busy(sim_bridge, LONG_SIM_MODEL) == 0, timeout=10, what="the bridge to abort")
        await until(lambda: _metric(sim_bridge, "bridge_aborts_total", model=LONG_SIM_MODEL) == aborts + 1,
                    timeout=10, what="bridge_aborts_total to count it")
        # A late call for the ended request reads as end-of-stream, not as a new 1-token prompt.
        out, _ = await eng.infer_tensor("left", shard, np.array([run.tokens[-1:]]), {})
        assert out.item() == eng.tokenizer.eos_token_id
    finally:
        await eng.cleanup()


async def test_exos_default_limit_beyond_what_the_bridge_takes_still_works(sim_bridge, exo_home):
    """exo's default --max-generate-tokens is 10000, more than a bridge accepts as max_new_tokens: the
    engine keeps that limit to itself and the request runs to its natural end."""
    eng = RKLLMInferenceEngine(None, settings=settings_for(sim_bridge.url, exo_home), cards=sim_cards())
    eng.bind_node_defaults(temperature=0.0, max_generate_tokens=10000)
    try:
        shard = shard_for(eng, SIM_MODEL)
        await eng.ensure_shard(shard)
        run = await node_generate(eng, shard, template(eng, PROMPT), max_generate_tokens=10000)
        assert run.finished_by_eos and len(run.tokens) == 49
        assert _last_params(sim_bridge, SIM_MODEL)["max_new_tokens"] == 256  # the Modelfile's own
    finally:
        await eng.cleanup()

