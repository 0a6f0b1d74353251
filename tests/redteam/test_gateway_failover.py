"""A board that freezes before its first token (SIGSTOP, real sim bridge processes) no longer holds its
request: the pool moves it to an idle healthy board, whether the frozen board is ejected by its health
checks or keeps answering them but sends nothing within its first-token budget."""

from __future__ import annotations

import asyncio
import signal

import pytest

from exo_rk.client import StreamEnd
from exo_rk.first_token import SLACK, PrefillRate, first_token_budget
from exo_rk.pool import BridgePool
from tests.pool.runs import generate
from tests.redteam.gateway_rig import CHAT_MODEL, sim_bridge, write_store
from tests.support import wait_for

LONG_PROMPT = list(range(1000, 1300))  # 300 ids: 60 s of prefill at 200 ms per token


def test_the_first_token_budget_follows_the_measured_prefill_speed_within_its_bounds():
    rate = PrefillRate()
    assert first_token_budget(100, rate.ms_per_token, floor=2, cap=60) == 60  # never measured: the cap
    rate.record(StreamEnd("stop", usage={"prompt_tokens": 110, "cached_tokens": 10},
                          timings={"prefill_ms": 500.0}))
    assert rate.ms_per_token == 5.0  # 500 ms for the 100 tokens actually prefilled
    assert first_token_budget(1000, rate.ms_per_token, floor=2, cap=60) == SLACK * 5.0
    assert first_token_budget(10, rate.ms_per_token, floor=2, cap=60) == 2  # the floor
    assert first_token_budget(100_000, rate.ms_per_token, floor=2, cap=60) == 60  # the cap
    rate.record(StreamEnd("stop", usage={"prompt_tokens": 8, "cached_tokens": 8}, timings={"prefill_ms": 1.0}))
    rate.record(StreamEnd("error"))
    assert rate.ms_per_token == 5.0  # nothing prefilled, nothing measured: no change


@pytest.fixture(scope="module")
def store(tmp_path_factory, default_model_dir):
    return write_store(tmp_path_factory.mktemp("redteam-failover"), default_model_dir)


@pytest.fixture
def bridges(store):
    started = []

    def start(*per_bridge):
        started.extend(sim_bridge(store, "--preload", CHAT_MODEL, *extra) for extra in per_bridge)
        return [b.start() for b in started]

    yield start
    for bridge in started:
        bridge.proc.send_signal(signal.SIGCONT)  # a stopped process would not die before it runs again
        bridge.kill(signal.SIGKILL)


async def generate_long(pool: BridgePool):
    return await generate(pool, CHAT_MODEL, 20, prompt=LONG_PROMPT)


async def poll(condition, what: str, timeout: float = 30.0):
    return await asyncio.to_thread(wait_for, condition, timeout, 0.05, what)


async def test_a_board_frozen_during_prefill_is_ejected_and_its_request_moves_to_the_idle_one(bridges):
    frozen, healthy = bridges(["--sim-prefill-ms-per-token", "200"], [])
    pool = BridgePool([frozen.url, healthy.url], health_interval=0.2, health_timeout=0.5, min_backoff=0.1)
    try:
        request = asyncio.create_task(generate_long(pool))
        await poll(lambda: frozen.get_json("/health")[1]["active"] == 1, "the request prefilling on the first board")
        frozen.proc.send_signal(signal.SIGSTOP)
        run = await asyncio.wait_for(request, 60)
        assert run.complete and len(run.tokens) == 20, run
        state = {b["url"]: b for b in pool.bridges()}
        assert state[frozen.url]["ejections"] == 1 and state[frozen.url]["errors"] == {"BridgeEjected": 1}
        assert state[healthy.url]["dispatched"] == 1 and pool.retries == 1
        # the frozen board learns of the abort when it runs again: its generation stops there
        frozen.proc.send_signal(signal.SIGCONT)
        await poll(lambda: frozen.get_json("/health")[1]["active"] == 0, "the abandoned prefill to be aborted")
    finally:
        await pool.close()


async def test_a_silent_board_that_still_answers_health_checks_loses_the_request_after_its_budget(bridges):
    silent, healthy = bridges([], [])
    # no health check after the first round: only the first-token budget can notice the silence
    pool = BridgePool([silent.url, healthy.url], health_interval=3600, first_token_floor=1.0)
    try:
        for _ in range(2):  # one request on each board measures its prefill speed
            assert (await generate(pool, CHAT_MODEL, 5)).complete
        assert [b["dispatched"] for b in pool.bridges()] == [1, 1]
        silent.proc.send_signal(signal.SIGSTOP)  # connections are still accepted; nothing is answered
        run = await asyncio.wait_for(generate_long(pool), 60)
        assert run.complete and len(run.tokens) == 20, run
        state = {b["url"]: b for b in pool.bridges()}
        assert state[silent.url]["errors"] == {"FirstTokenLate": 1}
        assert state[silent.url]["healthy"]  # late is not broken: ejection stays the health checks' call
        assert state[healthy.url]["dispatched"] == 2 and pool.retries == 1
    finally:
        silent.proc.send_signal(signal.SIGCONT)
        await pool.close()


async def test_with_no_other_board_a_slow_first_token_is_waited_for(bridges):
    (only,) = bridges(["--sim-prefill-ms-per-token", "10"])
    pool = BridgePool([only.url], health_interval=3600, first_token_floor=0.01)
    try:
        assert (await generate(pool, CHAT_MODEL, 5)).complete  # measures ~10 ms per token
        run = await asyncio.wait_for(generate_long(pool), 60)  # 3 s of prefill, far past a 0.01 s budget
        assert run.complete and len(run.tokens) == 20
        assert pool.retries == 0 and pool.bridges()[0]["errors"] == {}
    finally:
        await pool.close()


async def test_a_restarted_bridge_is_probed_on_demand_when_every_bridge_is_down(bridges):
    (board,) = bridges([])
    # after one failed probe the next one is 30 s away: only an on-demand probe can find the board sooner
    pool = BridgePool([board.url], health_interval=0.2, health_timeout=0.5, min_backoff=30, max_backoff=60)
    try:
        assert (await generate(pool, CHAT_MODEL, 5)).complete
        board.kill(signal.SIGKILL)
        await poll(lambda: not pool.bridges()[0]["healthy"], "the pool to see the board down")
        await asyncio.to_thread(board.restart)
        run = await asyncio.wait_for(generate(pool, CHAT_MODEL, 5), 20)
        assert run.complete, run
        assert pool.bridges()[0]["healthy"] and pool.bridges()[0]["dispatched"] == 2
    finally:
        await pool.close()
