"""Pure pieces of exo_rk: settings, model cards, request table, incremental text, request validation."""

from __future__ import annotations

import pytest

from exo_rk.detok import TextStream
from exo_rk.model_cards import card_from_mapping, load_cards
from exo_rk.request_state import RequestTable
from exo_rk.settings import Settings
from exo_rk.token_cache import messages_from_prompt


def test_settings_from_env_single_and_many_servers():
    one = Settings.from_env({"RKLLM_SERVER_HOST": "board", "RKLLM_SERVER_PORT": "9090"})
    assert one.servers == ("http://board:9090",)
    many = Settings.from_env({"RKLLM_SERVERS": "a:1, http://b:2/", "RKLLM_SERVER_HOST": "ignored"})
    assert many.servers == ("http://a:1", "http://b:2")
    assert Settings.from_env({}).servers == ("http://localhost:8080",)


@pytest.mark.parametrize(
    "env, field",
    [
        ({"RKLLM_MODE": "fast"}, "RKLLM_MODE"),
        ({"RKLLM_SERVER_PORT": "80a"}, "RKLLM_SERVER_PORT"),
        ({"RKLLM_TOKEN_TIMEOUT": "-1"}, "RKLLM_TOKEN_TIMEOUT"),
        ({"RKLLM_MAX_REQUESTS": "many"}, "RKLLM_MAX_REQUESTS"),
    ],
)
def test_settings_reject_bad_values_naming_the_variable(env, field):
    with pytest.raises(ValueError, match=field):
        Settings.from_env(env)


def test_user_cards_in_yaml_override_and_extend(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  phi-3-mini-rkllm: {bridge_model: Phi3, hf_repo: microsoft/Phi-3-mini-4k-instruct}\n"
        "  tiny: {hf_repo: org/tiny, layers: 4}\n"
    )
    cards = load_cards(path)
    assert cards["phi-3-mini-rkllm"].bridge_model == "Phi3"
    assert cards["tiny"].bridge_model == "tiny" and cards["tiny"].layers == 4
    assert "qwen2.5-1.5b-instruct-rkllm" in cards


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"hf_repo": "noslash"}, "hf_repo"),
        ({"hf_repo": "a/b", "layers": 0}, "layers"),
        ({"hf_repo": "a/b", "colour": "red"}, "unknown keys"),
    ],
)
def test_bad_user_cards_are_refused_with_the_field_named(entry, message):
    with pytest.raises(ValueError, match=message):
        card_from_mapping("m", entry)


class _State:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


def test_request_table_expires_idle_states_and_caps_the_count():
    now = [0.0]
    table = RequestTable(ttl=10, cap=2, clock=lambda: now[0])
    a, b, c = _State(), _State(), _State()
    table.put("a", a)
    table.put("b", b)
    now[0] = 5
    assert table.get("a") is a  # touched: now the most recently used
    table.put("c", c)  # over the cap: b, the least recently used, goes
    assert b.cancelled and table.ids() == ["a", "c"] and table.ended_reason("b") == "evicted"
    now[0] = 8
    assert table.get("c") is c
    now[0] = 16  # a idle for 11 s > ttl, c for 8 s
    assert table.expire() == ["a"] and a.cancelled and not c.cancelled
    table.finish("c", "stop")
    assert table.was_ended("c") and table.ended_reason("c") == "stop" and len(table) == 0


class _CharTokenizer:
    """Each token is one byte of UTF-8; decoding shows an incomplete character as U+FFFD, like HF does."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_never_splits_a_character_or_a_stop_sequence():
    tokens = list("café STOP after".encode())
    stream = TextStream(_CharTokenizer(), stop=["STOP"])
    pieces = [stream.push(t) for t in tokens]
    assert "".join(pieces) + stream.flush() == "café "
    assert stream.stop_hit and all("\ufffd" not in p for p in pieces)


def test_messages_read_back_from_a_chatml_prompt():
    prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert messages_from_prompt(prompt) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
    ]
    assert messages_from_prompt("plain text") is None


async def test_image_model_ids_go_to_the_image_engine():
    from exo_rk.engine import RKLLMInferenceEngine

    pytest.importorskip("exo_rk.image_engine", reason="exo_rk.image_engine is not installed")
    engine = RKLLMInferenceEngine(None, settings=Settings(servers=("http://127.0.0.1:9",)))
    assert type(engine._image()).__name__ == "RKNNImageInferenceEngine"
    assert engine._image() is engine._image()  # one image engine per RKLLM engine
