"""A pool of several stock rkllama servers in one-shot mode streams over the stock stream routes, as one
server does (not the cached ``/generate``), and spreads the requests over the servers."""

from __future__ import annotations

import asyncio

import pytest

from exo_rk import errors
from exo_rk.client import GenerationParams
from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.pool import BridgePool
from exo_rk.settings import Settings
from exo_rk.stock_pool import StockPool
from tests.exo_rk.bridges import SIM_MODEL, sim_cards
from tests.exo_rk.harness import chat, until
from tests.exo_rk.stock_rkllama import embedding_of, reply_words
from tests.exo_rk.test_stock_peers import CONVERSATION, WORDS, Double, stock_home  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def doubles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stock-pool")
    with Double(tmp / "a.jsonl") as a, Double(tmp / "b.jsonl", "--fork", "jfreed") as b:
        yield a, b


async def test_a_pool_of_stock_servers_streams_over_their_stream_routes(doubles, stock_home):  # noqa: F811
    a, b = doubles
    a.quirks("--ttft", "0.3")  # a slow first piece keeps the first request on a while the second starts
    b.quirks("--fork", "jfreed", "--ttft", "0.3")
    settings = Settings(servers=(a.url, b.url), exo_home=stock_home, mode="oneshot")
    eng = RKLLMInferenceEngine(None, settings=settings, cards=sim_cards())
    try:
        results = await asyncio.gather(chat(eng, SIM_MODEL, CONVERSATION), chat(eng, SIM_MODEL, CONVERSATION[:2]))
    finally:
        await eng.cleanup()
    received = a.received() + b.received()
    assert sorted(r["route"] for r in received) == ["/generate", "/v1/chat/completions"]
    assert all(r["stream"] is True for r in received)
    for (run, text), messages in zip(results, (CONVERSATION, CONVERSATION[:2]), strict=True):
        assert run.finished_by_eos
        assert text == "".join(reply_words(messages, WORDS))


async def test_the_pool_embeds_on_a_server_that_can_and_says_why_none_can(doubles):
    a, b = doubles
    a.quirks()
    b.quirks("--fork", "jfreed", "--preload", SIM_MODEL)  # b holds the model, so it is asked first
    pool = BridgePool([a.url, b.url])
    alone = BridgePool([b.url])
    try:
        reply = await pool.embed(SIM_MODEL, ["first text", "second"])
        dispatched = {u["url"]: u["dispatched"] for u in pool.bridges()}
        with pytest.raises(errors.EmbeddingsUnsupported, match="no /v1/embeddings route"):
            await alone.embed(SIM_MODEL, ["x"])
    finally:
        await pool.close()
        await alone.close()
    assert reply.vectors == [embedding_of("first text"), embedding_of("second")]
    assert reply.prompt_tokens == 3
    assert dispatched == {a.url: 1, b.url: 1}  # b, which cannot embed, was asked first and passed over


async def test_a_server_holding_another_model_is_passed_over(doubles):
    a, b = doubles
    one_model = ["--fork", "jfreed", "--single-model", "--models", f"{SIM_MODEL},other"]
    a.quirks(*one_model, "--preload", "other")  # listed first, so asked first
    b.quirks(*one_model)
    pool = BridgePool([a.url, b.url], stock_routes=("generate",), health_interval=0.1)
    ladder = StockPool(pool)
    try:
        await ladder.ensure_model(SIM_MODEL)
        pieces = [e async for e in ladder.stream(SIM_MODEL, CONVERSATION[1:2], GenerationParams(), lambda t: [len(t)])]
        served = [r["route"] for r in a.received()], [r["route"] for r in b.received()]
        b.quirks(*one_model, "--preload", "other")  # now every server holds another model
        await until(lambda: all(u["loaded"] == {"other": 1} for u in pool.bridges()), what="the next probes")
        with pytest.raises(errors.BadBridgeRequest, match="RKLLM_STOCK_UNLOAD_OTHER"):
            async for _ in ladder.stream(SIM_MODEL, CONVERSATION[1:2], GenerationParams(), lambda t: [1]):
                pass
    finally:
        await pool.close()
    assert served == ([], ["/generate"])
    assert [e.token_id for e in pieces[:-1]] == [len(w) for w in reply_words(CONVERSATION[1:2], WORDS)]
