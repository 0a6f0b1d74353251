"""Reasoning split and tool calls on the gateway's OpenAI surface, through the engine and a real bridge."""

from __future__ import annotations

import json
import sys

import pytest
from openai import OpenAI

from ..conftest import write_sim_model
from ..support import ServerProcess, bridge_argv
from .test_tools_reasoning import THINK_REPLY, TOOL_REPLY, WEATHER


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("gw-tools-models")
    write_sim_model(root, "tool-sim", default_model_dir, SIM_REPLY=TOOL_REPLY)
    write_sim_model(root, "think-sim", default_model_dir, SIM_REPLY=THINK_REPLY)
    with ServerProcess(bridge_argv(root, "sim", "--sim-profile", "instant", "--no-images")) as bridge:
        argv = [sys.executable, "-m", "exo_rk", "serve", "--host", "127.0.0.1", "--bridge", bridge.url]
        with ServerProcess(argv, env={"EXO_HOME": str(tmp_path_factory.mktemp("gw-tools-home"))}) as gw:
            yield gw


def test_gateway_returns_tool_calls_stream_and_not(gateway):
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    choice = client.chat.completions.create(model="tool-sim", messages=messages, tools=[WEATHER]).choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    calls, finish = [], None
    for chunk in client.chat.completions.create(model="tool-sim", messages=messages, tools=[WEATHER], stream=True):
        calls += chunk.choices[0].delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and [c.function.name for c in calls] == ["get_weather"]
    plain = client.chat.completions.create(model="tool-sim", messages=messages).choices[0]
    assert plain.finish_reason == "stop" and "<tool_call>" in plain.message.content


def test_gateway_splits_reasoning_stream_and_not(gateway):
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "2+2?"}]
    reply = client.chat.completions.create(model="think-sim", messages=messages).choices[0].message
    assert reply.content.strip() == "The answer is 4."
    assert reply.reasoning_content.strip() == "Two plus two: count 2, 3, 4."
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model="think-sim", messages=messages, stream=True):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert content.strip() == "The answer is 4." and reasoning.strip() == "Two plus two: count 2, 3, 4."


def test_gateway_rejects_malformed_tools(gateway):
    status, body = gateway.post_json("/v1/chat/completions", {"model": "tool-sim", "tools": [{"type": "nope"}],
                                                              "messages": [{"role": "user", "content": "x"}]})
    assert status == 400 and body["error"]["message"]
