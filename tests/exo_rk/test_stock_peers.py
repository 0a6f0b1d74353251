"""The one-shot mode against stock rkllama servers as they behave (``stock_rkllama.py``, its own process):
each quirk alone and all together, through the engine driven as exo's node drives it and through the
gateway with the official ``openai`` client. The text must equal what the server sent."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from exo_rk import errors
from exo_rk.client import BridgeClient
from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.stock_routes import merge_system
from exo_rk.tokenizer_store import make_portable, repo_dir
from tests.exo_rk.bridges import SIM_MODEL, SMOL_REPO, settings_for, sim_cards
from tests.exo_rk.harness import chat
from tests.exo_rk.stock_rkllama import embedding_of, reply_words
from tests.support import ServerProcess

DOUBLE = str(Path(__file__).with_name("stock_rkllama.py"))
WORDS = 16
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Name another one, please."},
]
ALL_QUIRKS = ["--single-model", "--preload", SIM_MODEL, "--generate-500", "--refuse-system", "--chunk-ids",
              "--tail-loss", "1"]


@pytest.fixture(scope="module")
def stock_home(tmp_path_factory, smol_dir) -> Path:
    """exo's home with SmolLM2's tokenizer in its downloads (a stock server serves no tokenizer files)."""
    home = tmp_path_factory.mktemp("stock-exo-home")
    target = repo_dir(home / "downloads", SMOL_REPO)
    target.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smol_dir / name, target / name)
    make_portable(target)
    return home


class Double(ServerProcess):
    """The stock server process; ``quirks(...)`` switches its behaviour and resets its state."""

    def __init__(self, record: Path, *argv: str):
        super().__init__([sys.executable, DOUBLE, "--record", str(record), *argv], health_path="/",
                         startup_timeout=30)
        self.record = record

    def quirks(self, *argv: str) -> None:
        self.record.write_text("")
        status, _ = self.post_json("/_double/quirks", {"argv": ["--record", str(self.record), *argv]})
        assert status == 200

    def received(self) -> list:
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    with Double(tmp_path_factory.mktemp("stock-double") / "record.jsonl") as server:
        yield server


def expected_text(received: dict, tail_loss: int = 0) -> str:
    pieces = reply_words(received["messages"], WORDS)
    return "".join(pieces[:len(pieces) - tail_loss])


async def run_engine(double, home, messages, **settings):
    eng = RKLLMInferenceEngine(None, settings=settings_for(double.url, home, **settings), cards=sim_cards())
    try:
        run, text = await chat(eng, SIM_MODEL, messages)
        return eng.server_usage(run.request_id), run, text
    finally:
        await eng.cleanup()


async def test_a_stock_server_is_told_from_a_bridge(double, sim_bridge):
    double.quirks()
    async with BridgeClient(double.url) as stock, BridgeClient(sim_bridge.url) as bridge:
        assert await stock.has_native_stream() is False
        assert await bridge.has_native_stream() is True


# (double's switches, engine settings, route the request must end on, pieces lost at the end)
CASES = {
    "punchnox 0.0.74": ([], {}, "/v1/chat/completions", 0),
    "generate answers 500": (["--generate-500"], {"stock_routes": ("generate", "ollama")}, "/api/chat", 0),
    "one model already loaded": (["--fork", "jfreed", "--single-model", "--preload", SIM_MODEL], {}, "/generate",
                                 0),
    "system message refused": (["--fork", "jfreed", "--refuse-system"], {}, "/generate", 0),
    "text/plain chunks with ids": (["--fork", "jfreed", "--chunk-ids"], {}, "/generate", 0),
    "tail loss": (["--tail-loss", "2"], {}, "/v1/chat/completions", 2),
    "all together": (ALL_QUIRKS, {"stock_routes": ("generate", "ollama", "openai")}, "/api/chat", 1),
    "all together, jfreed": (["--fork", "jfreed", *ALL_QUIRKS[:3], *ALL_QUIRKS[4:]], {}, "/generate", 1),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_engine_gives_exactly_what_the_stock_server_sent(case, double, stock_home, caplog):
    argv, settings, route, lost = CASES[case]
    double.quirks(*argv)
    caplog.set_level(logging.INFO)
    usage, run, text = await run_engine(double, stock_home, CONVERSATION, **settings)
    assert run.finished_by_eos
    answered = double.received()[-1]
    assert answered["route"] == route
    assert text == expected_text(answered, lost)
    refuses = "--refuse-system" in argv
    # Multi-turn with a system prompt: every turn reached the server, the system text merged when refused.
    assert answered["messages"] == (merge_system(CONVERSATION) if refuses else CONVERSATION)
    if refuses:
        assert "merging them into the first user turn" in caplog.text
    if "--preload" in argv:
        assert "already loaded" in caplog.text
    assert usage["completion_tokens"] == WORDS  # the server's own count, not a re-tokenization
    if lost:
        assert "the tail of the reply was lost" in caplog.text


async def test_the_cached_route_gives_the_same_text_as_the_streamed_one(double, stock_home):
    double.quirks("--fork", "jfreed")
    _, _, streamed = await run_engine(double, stock_home, CONVERSATION)
    _, _, cached = await run_engine(double, stock_home, CONVERSATION, stock_routes=("oneshot",))
    assert [r["route"] for r in double.received()] == ["/generate", "/generate"]
    assert cached == streamed == expected_text(double.received()[-1])


async def test_a_leaked_tail_is_reported(double, stock_home, caplog):
    double.quirks("--tail-loss", "2", "--tail-leak")
    await run_engine(double, stock_home, CONVERSATION)
    _, _, text = await run_engine(double, stock_home, CONVERSATION[:2])
    first, second = (reply_words(r["messages"], WORDS) for r in double.received())
    assert text == "".join(first[-2:] + second)  # what the server sent, relayed as it was
    assert "the lost tail of an earlier one" in caplog.text


async def test_a_different_loaded_model_is_unloaded_only_when_allowed(double, stock_home):
    double.quirks("--fork", "jfreed", "--single-model", "--models", f"{SIM_MODEL},other", "--preload", "other")
    with pytest.raises(errors.BadBridgeRequest, match="RKLLM_STOCK_UNLOAD_OTHER"):
        await run_engine(double, stock_home, CONVERSATION)
    _, run, text = await run_engine(double, stock_home, CONVERSATION, stock_unload_other=True)
    assert text == expected_text(double.received()[-1])


@pytest.fixture(scope="module")
def stock_gateway(tmp_path_factory, stock_home):
    """``exo-rk serve`` in front of a stock server with every quirk at once."""
    tmp = tmp_path_factory.mktemp("stock-gateway")
    cards = tmp / "cards.toml"
    cards.write_text(f'[models.{SIM_MODEL}]\nhf_repo = "{SMOL_REPO}"\nlayers = 30\n')
    with Double(tmp / "record.jsonl", *ALL_QUIRKS) as stock:
        argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", stock.url]
        env = {"EXO_HOME": str(stock_home), "RKLLM_SERVERS": "", "RKLLM_MODELS_FILE": str(cards)}
        with ServerProcess(argv, env=env, startup_timeout=60) as gateway:
            yield stock, gateway


def test_the_gateway_serves_a_quirky_stock_server_to_the_openai_client(stock_gateway):
    stock, gateway = stock_gateway
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        assert SIM_MODEL in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(model=SIM_MODEL, messages=CONVERSATION)
        answered = stock.received()[-1]
        assert answered["messages"] == merge_system(CONVERSATION)
        assert reply.choices[0].message.content == expected_text(answered, 1)
        assert reply.usage.completion_tokens == WORDS
        chunks = list(client.chat.completions.create(model=SIM_MODEL, messages=CONVERSATION[:2], stream=True,
                                                     stream_options={"include_usage": True}))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == expected_text(stock.received()[-1], 1)
        assert chunks[-1].usage.completion_tokens == WORDS
        # a text completion reaches a message-only server as one user turn
        done = client.completions.create(model=SIM_MODEL, prompt="Tell me a story")
        answered = stock.received()[-1]
        assert answered["messages"] == [{"role": "user", "content": "Tell me a story"}]
        assert done.choices[0].text == expected_text(answered, 1) and done.usage.completion_tokens == WORDS


def test_the_gateway_embeds_through_a_stock_server_and_says_when_it_cannot(stock_gateway):
    stock, gateway = stock_gateway
    texts = ["Name a colour.", "Blue sky over the fjord"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        one = client.embeddings.create(model=SIM_MODEL, input=texts[0], encoding_format="float")
        both = client.embeddings.create(model=SIM_MODEL, input=texts)  # one concatenated vector from rkllama
        assert one.data[0].embedding == embedding_of(texts[0])
        assert [d.index for d in both.data] == [0, 1]
        assert all(np.allclose(d.embedding, embedding_of(t), atol=1e-6) for d, t in zip(both.data, texts, strict=True))
        assert both.usage.prompt_tokens == sum(len(t.split()) for t in texts)
        stock.quirks("--fork", "jfreed")  # the original API has no embeddings route
        try:
            with pytest.raises(openai.APIStatusError) as caught:
                client.embeddings.create(model=SIM_MODEL, input="x")
        finally:
            stock.quirks(*ALL_QUIRKS)
    assert caught.value.status_code == 501
    assert "no /v1/embeddings route" in caught.value.body["message"]
