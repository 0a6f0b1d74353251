"""``BridgePool`` against real sim bridge processes on loopback: spreading, model affinity, failover."""

from __future__ import annotations

import asyncio
import signal

from exo_rk import errors
from exo_rk.client import GenerationParams, TokenEvent
from exo_rk.pool import BridgePool, NoBridgeAvailable
from tests.pool.conftest import PHI, QWEN, TINY
from tests.pool.runs import PROMPT, Run, generate, metric
from tests.support import wait_for

FAST_HEALTH = dict(health_interval=0.2, min_backoff=0.1, max_backoff=0.5)


async def poll(condition, timeout: float = 20.0, what: str = "condition"):
    """``wait_for`` for the event loop: the pool keeps running while the condition is polled."""
    return await asyncio.to_thread(wait_for, condition, timeout, 0.05, what)


async def open_stream(pool: BridgePool, model: str):
    """A long request that is running (its first token arrived); close it to end it."""
    events = pool.stream(model, PROMPT, GenerationParams())
    first = await events.__anext__()
    assert isinstance(first, TokenEvent)
    return events


async def test_load_spreads_by_outstanding_work_weighted_by_instances(start_bridges):
    big, a, b = start_bridges(["--instances", "2", "--preload", QWEN], ["--preload", QWEN],
                              ["--preload", QWEN])
    pool = BridgePool([big.url, a.url, b.url], **FAST_HEALTH)
    held = []
    try:
        for _ in range(4):
            held.append(await open_stream(pool, QWEN))
        # two instances take two requests, the others one each: as the bridges themselves report
        await poll(lambda: (big.busy(), a.busy(), b.busy()) == (2, 1, 1), what="busy 2/1/1")
        assert [x["outstanding"] for x in pool.bridges()] == [2, 1, 1]
        # the request running on `a` ends: the next one goes where the work is least, `a` again
        on_a = held.pop(1)
        await on_a.aclose()
        await poll(lambda: a.busy() == 0, what="a idle")
        held.append(await open_stream(pool, QWEN))
        await poll(lambda: (big.busy(), a.busy(), b.busy()) == (2, 1, 1), what="busy 2/1/1 again")
        assert [x["dispatched"] for x in pool.bridges()] == [2, 2, 1]
        text = pool.metrics_text().decode()
        assert metric(text, "exo_rk_pool_outstanding_requests", bridge=big.url) == 2
        assert metric(text, "exo_rk_pool_requests_total", bridge=a.url) == 2
    finally:
        for events in held:
            await events.aclose()
        await pool.close()
    assert sum(x["outstanding"] for x in pool.bridges()) == 0


async def test_requests_go_to_a_bridge_that_has_the_model(start_bridges):
    has_qwen, has_phi, empty = start_bridges(["--preload", QWEN], ["--preload", PHI], [])
    pool = BridgePool([has_qwen.url, has_phi.url, empty.url], **FAST_HEALTH)
    try:
        assert (await pool.ensure_model(QWEN)).id == QWEN
        assert (await pool.ensure_model(PHI)).id == PHI
        for _ in range(3):  # both models in play at once, each bridge busy with its own
            runs = await asyncio.gather(generate(pool, QWEN), generate(pool, PHI))
            assert all(r.complete and len(r.tokens) == 30 for r in runs), runs
        assert (has_qwen.loaded(), has_phi.loaded(), empty.loaded()) == ([QWEN], [PHI], [])
        # a model nobody has is loaded once, on the least busy bridge, and used there from then on
        busy = await asyncio.gather(open_stream(pool, QWEN), open_stream(pool, PHI))
        try:
            await pool.ensure_model(TINY)
            assert (has_qwen.loaded(), has_phi.loaded(), empty.loaded()) == ([QWEN], [PHI], [TINY])
            for _ in range(2):
                assert (await generate(pool, TINY)).complete
        finally:
            for events in busy:
                await events.aclose()
        assert (has_qwen.loaded(), has_phi.loaded(), empty.loaded()) == ([QWEN], [PHI], [TINY])
        loads = metric(pool.metrics_text().decode(), "exo_rk_pool_model_loads_total")
        assert loads == 1  # TINY on `empty`: the only load the pool asked for
    finally:
        await pool.close()


async def test_sigkill_under_load_loses_no_request_and_the_restarted_bridge_is_used_again(start_bridges):
    bridges = start_bridges(*[["--preload", QWEN]] * 3)
    victim = bridges[1]
    pool = BridgePool([b.url for b in bridges], **FAST_HEALTH)
    try:
        reference = await generate(pool, QWEN, 40)
        assert reference.complete and len(reference.tokens) == 40
        runs = [Run() for _ in range(9)]  # three per bridge: one running, two waiting in its queue
        tasks = [asyncio.create_task(generate(pool, QWEN, 40, run)) for run in runs]
        # kill while each bridge is mid-way through one request (10+ tokens to go) and has more queued
        mid_way = lambda: sum(1 for r in runs if 0 < len(r.tokens) <= 30) == 3  # noqa: E731
        await poll(lambda: mid_way() and victim.health()["models"][0]["queued"] >= 1,
                   what="every bridge mid-way through a request, the victim with more queued")
        started_before_kill = sum(1 for r in runs if r.tokens)
        victim.kill(signal.SIGKILL)
        # not one request hangs: each ends (whole, or visibly broken) well within its deadline
        done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, f"{len(pending)} requests hang after the bridge was killed"
        broken = [r for r in runs if not r.complete]
        whole = [r for r in runs if r.complete]
        # the one request running on the victim ends with an error the caller sees, after its tokens,
        # none of them repeated; everything that had not started there finished on another bridge
        assert len(broken) == 1, [(len(r.tokens), r.error) for r in broken]
        assert isinstance(broken[0].error, errors.BridgeUnavailable)
        assert 0 < len(broken[0].tokens) < 40
        assert broken[0].tokens == reference.tokens[:len(broken[0].tokens)]
        assert all(r.tokens == reference.tokens for r in whole)
        assert started_before_kill >= 1
        state = {x["url"]: x for x in pool.bridges()}
        assert state[victim.url]["ejections"] == 1 and not state[victim.url]["healthy"]
        assert pool.retries >= 1  # the victim's queued requests moved before their first token
        assert all(x["outstanding"] == 0 for x in pool.bridges())
        # the bridge comes back on its address: the health checks find it and it takes work again
        victim.restart()
        await poll(lambda: {x["url"]: x for x in pool.bridges()}[victim.url]["healthy"], what="victim back")
        runs = await asyncio.gather(*(generate(pool, QWEN, 40) for _ in range(3)))
        assert all(r.complete for r in runs)
        served = lambda: metric(victim.request("GET", "/metrics")[2].decode(), "bridge_generations_total")  # noqa: E731
        await poll(lambda: served() == 1, what="the restarted bridge to have served one of the three")
    finally:
        await pool.close()


async def test_all_bridges_down_fails_at_once_with_no_bridge_available(start_bridges):
    bridges = start_bridges(["--preload", QWEN], ["--preload", QWEN])
    pool = BridgePool([b.url for b in bridges], **FAST_HEALTH)
    try:
        assert (await generate(pool, QWEN)).complete
        for b in bridges:
            b.kill(signal.SIGKILL)
        run = await asyncio.wait_for(generate(pool, QWEN), 10)
        assert isinstance(run.error, NoBridgeAvailable) and not run.tokens
        assert "0 of 2 bridges up" in str(run.error)
        try:
            await asyncio.wait_for(pool.list_models(), 10)
        except NoBridgeAvailable:
            pass
        else:
            raise AssertionError("list_models answered with every bridge down")
    finally:
        await pool.close()


async def test_bridges_join_and_leave_through_the_servers_file(start_bridges, tmp_path):
    first, second = start_bridges(["--preload", QWEN], ["--preload", QWEN])
    servers = tmp_path / "servers"
    servers.write_text(f"{first.url}  # the first board\n")
    pool = BridgePool([], servers_file=servers, **FAST_HEALTH)
    try:
        held = await open_stream(pool, QWEN)  # keeps `first` busy for 20 s
        assert [x["url"] for x in pool.bridges()] == [first.url]
        servers.write_text(f"{first.url}\n{second.url.removeprefix('http://')}\n")
        await poll(lambda: [x["healthy"] for x in pool.bridges()] == [True, True], what="second joins")
        assert (await generate(pool, QWEN)).complete  # on the idle newcomer, not queued behind `held`
        assert [x["dispatched"] for x in pool.bridges()] == [1, 1]
        servers.write_text(f"{second.url}\n")
        await poll(lambda: [x["url"] for x in pool.bridges()] == [second.url], what="first leaves")
        assert (await generate(pool, QWEN)).complete
        assert [x["dispatched"] for x in pool.bridges()] == [2]
        # the request already running on the bridge that left is not cut off
        assert isinstance(await held.__anext__(), TokenEvent)
        await held.aclose()
        assert first.busy() == 0 or await poll(lambda: first.busy() == 0, what="held request aborted")
    finally:
        await pool.close()
