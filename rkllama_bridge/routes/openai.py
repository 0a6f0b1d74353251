"""OpenAI-shaped routes: ``/v1/models`` and ``/v1/chat/completions`` (JSON, or SSE ending in [DONE]).

Beyond the basic shape: ``<think>`` blocks come back as ``reasoning_content``; ``tools`` /
``tool_choice`` are shown to the model through its chat template and Qwen/Hermes ``<tool_call>``
output comes back as ``tool_calls`` with ``finish_reason: "tool_calls"``; ``truncate`` ("left") and
``keep_alive`` are accepted as on the Ollama routes; cached prompt tokens (prefix reuse) are reported
in ``usage.prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import json
import time
import uuid

from flask import Blueprint, jsonify

from ..params import messages_field, optional_bool
from ..reply_shaping import REASONING, ReplyStream, chat_inputs, prompt_opens_think, shape_reply
from ..tool_calls import validate_tools
from .common import (
    client_gone_probe,
    collect,
    json_body,
    model_field,
    report_ignored,
    service,
    stop_list,
    streaming,
    text_pieces,
)

bp = Blueprint("openai", __name__)

FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "error", "timeout": "length"}


@bp.get("/v1/models")
def models():
    created = int(time.time())
    return jsonify({"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "rkllama-bridge"}
        for n in service().store.names()]})


def chat_fields(body: dict) -> dict:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return {"max_new_tokens": max_tokens, "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "seed": body.get("seed"), "frequency_penalty": body.get("frequency_penalty"),
            "presence_penalty": body.get("presence_penalty"), "top_k": body.get("top_k"),
            "repeat_penalty": body.get("repeat_penalty")}


def start_tool_chat(body: dict, messages: list, fields: dict, tools: list):
    """Start a chat generation with ``tools`` shown to the model; returns (generation, stored, opened)
    where ``opened`` says the prompt leaves the model inside a ``<think>`` block."""
    svc = service()
    report_ignored(fields)
    name = svc.resolve_model(model_field(body, "model"))
    stored = svc.load(name, svc.keep_alive_field(body.get("keep_alive"))).stored
    msgs, extra = chat_inputs(messages, tools, stored.tokenizer.chat_template, stored.system_prompt)
    generation, stored = svc.start_chat(name, msgs, fields, client_gone_probe(), truncate=body.get("truncate"),
                                        keep_alive=body.get("keep_alive"), **extra)
    tail = stored.tokenizer.decode(generation.prompt_ids[-8:], skip_special_tokens=False)
    return generation, stored, prompt_opens_think(tail)


@bp.post("/v1/chat/completions")
def chat_completions():
    body = json_body()
    messages = messages_field(body)
    stops = stop_list(body.get("stop"))
    stream = optional_bool(body, "stream", False)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(
        body.get("stream_options"), dict) else False
    tools = validate_tools(body.get("tools"), body.get("tool_choice"))
    generation, stored, opened = start_tool_chat(body, messages, chat_fields(body), tools)
    cid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), stored.name
    pieces = text_pieces(generation, stops)
    if not stream:
        text, done = collect(pieces)
        reply = shape_reply(text, opened, bool(tools))
        message = {"role": "assistant", "content": reply.content if reply.content or not reply.tool_calls else None}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        finish = "tool_calls" if reply.tool_calls else FINISH[done.finish_reason]
        out = {"id": cid, "object": "chat.completion", "created": created, "model": name,
               "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": _usage(done)}
        if generation.dropped_messages:
            out["truncated_messages"] = generation.dropped_messages
        return jsonify(out)

    def chunk(delta: dict, finish=None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def deltas(parts):
        for kind, text in parts:
            yield chunk({"reasoning_content": text} if kind == REASONING else {"content": text})

    def events():
        shaper = ReplyStream(opened, bool(tools))
        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            if piece.text:
                yield from deltas(shaper.push(piece.text))
            if piece.done:
                parts, calls = shaper.finish()
                yield from deltas(parts)
                if calls:
                    yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                if piece.done.finish_reason == "error":
                    yield {"error": piece.done.error}
                yield chunk({}, "tool_calls" if calls else FINISH[piece.done.finish_reason])
                if include_usage:
                    yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                           "choices": [], "usage": _usage(piece.done)}

    def sse():
        for item in events():
            yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode("utf-8")
        yield b"data: [DONE]\n\n"

    return streaming(sse(), generation, "text/event-stream")


def _usage(done) -> dict:
    usage = {k: done.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if done.usage.get("cached_tokens"):
        usage["prompt_tokens_details"] = {"cached_tokens": done.usage["cached_tokens"]}
    return usage
