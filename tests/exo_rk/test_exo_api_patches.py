"""The hook's patches of exo's ChatGPT API and node, each against a module shaped as exo's real one
(``tests/exo_rk/exo_shaped_api.py``), served on a real port in front of a real sim bridge."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from exo_rk import registration
from exo_rk.engine import RKLLMInferenceEngine
from tests.exo_rk.bridges import LONG_SIM_MODEL, SIM_MODEL, settings_for, sim_bridge_process, sim_cards
from tests.exo_rk.harness import until

SHAPED = Path(__file__).with_name("exo_shaped_api.py")
ASK = [{"role": "user", "content": "Say something."}]


def fresh_exo_module(name: str = "exo_shaped_api_under_test"):
    """A new copy of the exo-shaped module, patched as the hook patches exo's chatgpt_api and node."""
    spec = importlib.util.spec_from_file_location(name, SHAPED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for card in sim_cards().values():
        mod.model_cards[card.model_id] = {"layers": card.layers, "repo": {"RKLLMInferenceEngine": card.hf_repo}}
    mod.model_cards["llama-3.2-1b"] = {"layers": 16, "repo": {"TinygradDynamicShardInferenceEngine": "x/y"}}
    registration.patch_chatgpt_api(mod)
    registration.patch_node(mod)
    return mod


class HubThatNeverAnswers:
    """exo's downloader offline: ``get_shard_download_status`` retries the hub for minutes."""

    def __init__(self):
        self.asked = asyncio.Event()

    async def get_shard_download_status(self, inference_engine_name):
        self.asked.set()
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached


@asynccontextmanager
async def exo_api(bridge_url: str, exo_home: Path, max_generate_tokens: int = 1024, engine=None):
    mod = fresh_exo_module()
    engine = engine or RKLLMInferenceEngine(None, settings=settings_for(bridge_url, exo_home, token_timeout=20),
                                            cards=sim_cards())
    node = mod.Node("node-1", None, engine, None, HubThatNeverAnswers(), max_generate_tokens=max_generate_tokens)
    api = mod.ChatGPTAPI(node, type(engine).__name__, default_model=SIM_MODEL)
    runner = web.AppRunner(api.app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield http, engine, node
    finally:
        await runner.cleanup()
        if hasattr(engine, "cleanup"):
            await engine.cleanup()


async def _sse(http, body) -> list:
    async with http.post("/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200
        return [line.decode().strip() async for line in resp.content if line.strip()]


async def test_the_node_hands_its_token_limit_and_temperature_to_the_engine(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home, max_generate_tokens=7) as (_, engine, _node):
        assert engine.exo_max_tokens == 7 and engine.exo_temperature == 0.0


async def test_reply_content_has_no_eos_text(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home) as (http, engine, _):
        async with http.post("/v1/chat/completions", json={"model": SIM_MODEL, "messages": ASK}) as resp:
            reply = await resp.json()
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] and "<|im_end|>" not in choice["message"]["content"]
        assert reply["usage"]["completion_tokens"] == 48  # the sim's reply, without the EOS exo appended


async def test_request_max_tokens_is_honoured(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home) as (http, _, _node):
        body = {"model": LONG_SIM_MODEL, "messages": ASK, "max_tokens": 5}
        async with http.post("/v1/chat/completions", json=body) as resp:
            reply = await resp.json()
    assert reply["usage"]["completion_tokens"] == 5
    assert reply["choices"][0]["finish_reason"] == "length"
    assert [r for r in sim_bridge.recorded() if r["model"] == LONG_SIM_MODEL][-1]["params"]["max_new_tokens"] == 5


async def test_stream_ends_with_done(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home) as (http, _, _node):
        lines = await _sse(http, {"model": SIM_MODEL, "messages": ASK})
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "<|im_end|>" not in "".join(c["choices"][0]["delta"]["content"] for c in chunks)


async def test_a_reply_cut_by_a_dead_bridge_is_marked_and_logged(sim_store, tmp_path, exo_home, caplog):
    caplog.set_level(logging.WARNING, logger="exo_rk.exo_api")
    with sim_bridge_process(sim_store, tmp_path) as bridge:
        async with exo_api(bridge.url, exo_home) as (http, _, _node):
            async with http.post("/v1/chat/completions",
                                 json={"model": LONG_SIM_MODEL, "messages": ASK, "stream": True}) as resp:
                lines = []
                async for line in resp.content:
                    if line.strip():
                        lines.append(line.decode().strip())
                    if len(lines) == 3:
                        bridge.kill()  # SIGKILL mid-reply
    final = json.loads(lines[-2][6:])
    assert final["choices"][0]["finish_reason"] == "error"  # before: "stop", the cut text looked complete
    request_id = final["id"].removeprefix("chatcmpl-")
    assert any(request_id in r.getMessage() and "cut short" in r.getMessage() for r in caplog.records)


async def test_modelpool_answers_at_once_for_the_engines_cards(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home) as (http, engine, node):
        async with http.get("/modelpool") as resp:
            lines = [line.decode().strip() async for line in resp.content if line.strip()]
        assert lines[-1] == "data: [DONE]"
        statuses = {k: v for line in lines[:-1] for k, v in json.loads(line[6:]).items()}
        assert set(statuses) == set(engine.cards)
        assert all(s["downloaded"] and s["download_percentage"] == 100 for s in statuses.values())
        assert not node.shard_downloader.asked.is_set()  # the hub was never asked


class OtherEngine:
    """Another engine's node: the patches must leave exo's behaviour alone."""

    def __init__(self):
        self.tokenizer = None


async def test_other_engines_keep_exos_behaviour(sim_bridge, exo_home):
    async with exo_api(sim_bridge.url, exo_home, engine=OtherEngine()) as (http, _, node):
        task = asyncio.create_task(http.get("/modelpool"))
        await until(node.shard_downloader.asked.is_set, timeout=10, what="exo's own download status")
        task.cancel()
    mod = fresh_exo_module("exo_shaped_api_other")

    class Tok:
        eos_token_id = 2

        def decode(self, tokens):
            return " ".join(map(str, tokens))

    request = mod.parse_chat_request({"model": "llama-3.2-1b", "messages": ASK, "max_tokens": 3}, "x")
    out = mod.generate_completion(request, Tok(), "", "r1", [5, 2], False, "stop", "chat.completion")
    assert out["choices"][0]["message"]["content"] == "5 2" and request.max_tokens == 3


def test_patches_wrap_once_and_are_marked_by_identity():
    mod = fresh_exo_module("exo_shaped_api_twice")
    first = mod.generate_completion
    registration.patch_chatgpt_api(mod)
    assert mod.generate_completion is first and registration.is_patched(first)
    assert not registration.is_patched(first.__wrapped__)

