"""Reasoning split and tool calls through the bridge's OpenAI and Ollama routes, with the official
``openai`` client against sim models whose replies are a tool call and a think block."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from rk_common.reasoning import split_reasoning
from rk_common.reply_shaping import ReplyStream, shape_reply

from ..conftest import write_sim_model

TOOL_REPLY = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
THINK_REPLY = "<think>\nTwo plus two: count 2, 3, 4.\n</think>\n\nThe answer is 4."
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "unit": {"type": "string"}}}}}


@pytest.fixture
def bridge(start_bridge, tmp_path, default_model_dir):
    root = tmp_path / "models"
    write_sim_model(root, "tool-sim", default_model_dir, SIM_REPLY=TOOL_REPLY)
    write_sim_model(root, "think-sim", default_model_dir, SIM_REPLY=THINK_REPLY)
    record = tmp_path / "prompts.jsonl"
    b = start_bridge("--sim-profile", "instant", "--record-prompts", str(record), models_dir=root)
    b.record = record
    return b


def last_prompt(b, tokenizer) -> str:
    ids = json.loads(b.record.read_text().splitlines()[-1])["prompt_token_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_tool_call_round_trip_with_the_openai_client(bridge, default_tokenizer):
    client = OpenAI(base_url=bridge.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="tool-sim", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert "get_weather" in last_prompt(bridge, default_tokenizer), "the model was shown the tools"

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'}]
    second = client.chat.completions.create(model="tool-sim", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "tool_calls"
    prompt = last_prompt(bridge, default_tokenizer)
    assert '{"temp": 18}' in prompt and "Paris" in prompt

    stream = client.chat.completions.create(model="tool-sim", messages=messages[:1], tools=[WEATHER], stream=True)
    calls, finish, content = [], None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "" and [c.function.name for c in calls] == ["get_weather"]

    plain = client.chat.completions.create(model="tool-sim", messages=messages[:1], tool_choice="none",
                                           tools=[WEATHER])
    assert plain.choices[0].finish_reason == "stop" and "<tool_call>" in plain.choices[0].message.content


def test_reasoning_is_split_into_reasoning_content_stream_and_not(bridge):
    client = OpenAI(base_url=bridge.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "2+2?"}]
    reply = client.chat.completions.create(model="think-sim", messages=messages).choices[0].message
    assert reply.content == "The answer is 4."
    assert reply.reasoning_content == "Two plus two: count 2, 3, 4."
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model="think-sim", messages=messages, stream=True):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert content == "The answer is 4." and reasoning.strip() == "Two plus two: count 2, 3, 4."
    status, body = bridge.post_json("/api/chat", {"model": "think-sim", "messages": messages, "stream": False})
    assert status == 200 and body["message"]["thinking"] == "Two plus two: count 2, 3, 4."
    assert body["message"]["content"] == "The answer is 4."
    status, body = bridge.post_json("/api/chat", {"model": "tool-sim", "messages": messages, "stream": False,
                                                  "tools": [WEATHER]})
    assert body["message"]["tool_calls"] == [{"function": {"name": "get_weather",
                                                           "arguments": {"city": "Paris", "unit": "celsius"}}}]


@pytest.mark.parametrize("text,opened", [(THINK_REPLY, False), ("still thinking</think>answer", True),
                                         ("no think block at all", False), ("<think>cut off by the budget", False),
                                         ("  <thinking> is not the tag", False)])
def test_streaming_split_matches_the_whole_split_at_every_cut(text, opened):
    whole = shape_reply(text, opened, tools=True)
    for cut in range(len(text) + 1):
        for step in (1, 3):
            shaper = ReplyStream(opened, tools=True)
            parts = shaper.push(text[:cut])
            for i in range(cut, len(text), step):
                parts += shaper.push(text[i:i + step])
            rest, calls = shaper.finish()
            parts += rest
            reasoning = "".join(t for k, t in parts if k == "reasoning")
            content = "".join(t for k, t in parts if k == "content")
            assert (reasoning.strip(), content, calls) == (whole.reasoning, whole.content, whole.tool_calls)
    assert split_reasoning("<think>a</think>b") == ("a", "b")
