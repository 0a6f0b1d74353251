"""The pool's finer rules against real sim bridges: other clients' work, 429 failover, deadlines, and the
engine driven through the pool as exo's node drives it while a bridge dies."""

from __future__ import annotations

import asyncio
import signal

from exo_rk import errors
from exo_rk.client import BridgeClient, GenerationParams
from exo_rk.engine import STATE_PARAMS, RKLLMInferenceEngine
from exo_rk.model_cards import ModelCard
from exo_rk.pool import BridgePool, DeadlineExceeded
from exo_rk.settings import Settings
from tests.exo_rk.harness import node_generate, shard_for, template
from tests.pool.conftest import QWEN
from tests.pool.runs import PROMPT, generate, metric
from tests.pool.test_pool_bridges import FAST_HEALTH, poll


async def test_work_of_other_clients_steers_requests_away(start_bridges):
    shared, free = start_bridges(["--preload", QWEN], ["--preload", QWEN])
    other_client = BridgeClient(shared.url)
    pool = BridgePool([shared.url, free.url], **FAST_HEALTH)
    theirs = other_client.stream(QWEN, PROMPT, GenerationParams())
    try:
        await theirs.__anext__()  # someone else's long request runs on `shared`
        await pool.ensure_model(QWEN)
        await poll(lambda: pool.bridges()[0]["external"] == 1, what="the pool to see the other client's work")
        for _ in range(2):
            assert (await generate(pool, QWEN)).complete
        assert [x["dispatched"] for x in pool.bridges()] == [0, 2]
    finally:
        await theirs.aclose()
        await other_client.close()
        await pool.close()


async def test_a_full_bridge_is_retried_elsewhere_before_the_first_token(start_bridges):
    first, second = start_bridges(*[["--preload", QWEN, "--queue-max", "0"]] * 2)
    other_clients = [BridgeClient(first.url), BridgeClient(second.url)]
    pool = BridgePool([first.url, second.url], health_interval=60)  # the pool cannot know `first` is full
    held = []
    try:
        await pool.ensure_model(QWEN)
        held.append(other_clients[0].stream(QWEN, PROMPT, GenerationParams()))
        await held[0].__anext__()
        run = await generate(pool, QWEN)  # `first` answers 429; the request moves to `second`
        assert run.complete and len(run.tokens) == 30
        text = pool.metrics_text().decode()
        assert metric(text, "exo_rk_pool_errors_total", bridge=first.url, error="BridgeBusy") == 1
        assert metric(text, "exo_rk_pool_retries_total") == 1
        assert [x["healthy"] for x in pool.bridges()] == [True, True]  # busy is not broken: no ejection
        # both full: the caller gets the bridges' own answer, busy (429 at the gateway), not a hang
        held.append(other_clients[1].stream(QWEN, PROMPT, GenerationParams()))
        await held[1].__anext__()
        run = await asyncio.wait_for(generate(pool, QWEN), 10)
        assert isinstance(run.error, errors.BridgeBusy) and not run.tokens
    finally:
        for events in held:
            await events.aclose()
        for client in other_clients:
            await client.close()
        await pool.close()


async def test_first_token_and_whole_request_deadlines(start_bridges):
    slow, = start_bridges(["--preload", QWEN, "--sim-prefill-ms-per-token", "2000"])  # 12 s to first token
    pool = BridgePool([slow.url], first_token_timeout=1.0, **FAST_HEALTH)
    try:
        run = await asyncio.wait_for(generate(pool, QWEN), 10)
        assert isinstance(run.error, DeadlineExceeded) and not run.tokens
        await poll(lambda: slow.busy() == 0, what="the late request to be aborted on the bridge")
        assert pool.bridges()[0]["healthy"]  # slow is not dead
    finally:
        await pool.close()
    fast, = start_bridges(["--preload", QWEN])
    pool = BridgePool([fast.url], request_timeout=1.0, **FAST_HEALTH)
    try:
        run = await asyncio.wait_for(generate(pool, QWEN, None), 10)  # 1000 tokens: 20 s
        assert isinstance(run.error, DeadlineExceeded) and 0 < len(run.tokens) < 1000
        await poll(lambda: fast.busy() == 0, what="the late request to be aborted on the bridge")
    finally:
        await pool.close()


async def test_engine_over_a_pool_survives_a_bridge_killed_under_load(start_bridges, tmp_path):
    bridges = start_bridges(*[["--preload", QWEN]] * 3)
    victim = bridges[2]
    settings = Settings(servers=tuple(b.url for b in bridges), exo_home=tmp_path / "exo", token_timeout=10,
                        health_interval=0.2, health_max_backoff=0.5)
    card = ModelCard(QWEN, QWEN, "Qwen/Qwen2.5-1.5B-Instruct", 30, QWEN)
    engine = RKLLMInferenceEngine(None, settings=settings, cards={QWEN: card})
    try:
        assert isinstance(engine.backend, BridgePool)
        shard = shard_for(engine, QWEN)
        await engine.ensure_shard(shard)
        assert [b.loaded() for b in bridges] == [[QWEN]] * 3  # nothing loaded twice
        prompt = template(engine, [{"role": "user", "content": "Tell me a story."}])
        state = {STATE_PARAMS: {"max_new_tokens": 40}}
        progress = {}  # request id -> its (growing) token list

        def track(run, _token) -> None:
            progress[run.request_id] = run.tokens

        tasks = [asyncio.create_task(node_generate(engine, shard, prompt, inference_state=dict(state),
                                                   on_token=track)) for _ in range(6)]
        # kill while each bridge is mid-way through one request (10+ tokens to go) and has one queued
        mid_way = lambda: sum(1 for t in list(progress.values()) if 0 < len(t) <= 30) == 3  # noqa: E731
        await poll(lambda: mid_way() and victim.health()["models"][0]["queued"] >= 1,
                   what="every bridge mid-way through a request, the victim with one queued")
        victim.kill(signal.SIGKILL)
        done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "a request hangs after its bridge was killed"
        runs = [t.result() for t in tasks]
        assert all(r.finished_by_eos for r in runs)  # exo's loop always sees its EOS
        reasons = sorted(engine.finish_reason(r.request_id) for r in runs)
        # the one that was generating on the victim ended early and says so; the rest were whole
        assert reasons == ["error"] + ["length"] * 5, reasons
        broken = next(r for r in runs if engine.finish_reason(r.request_id) == "error")
        assert 1 < len(broken.tokens) < 41
        whole = [r.tokens for r in runs if r is not broken]
        assert all(t == whole[0] and len(t) == 41 for t in whole)
        assert broken.tokens[:-1] == whole[0][:len(broken.tokens) - 1]  # a prefix: nothing repeated
    finally:
        await engine.cleanup()
