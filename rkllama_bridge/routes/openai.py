"""OpenAI-shaped routes: ``/v1/models`` and ``/v1/chat/completions`` (JSON, or SSE ending in [DONE])."""

from __future__ import annotations

import json
import time
import uuid

from flask import Blueprint, jsonify

from ..params import messages_field, optional_bool
from .common import collect, json_body, model_field, service, start_chat, stop_list, streaming, text_pieces

bp = Blueprint("openai", __name__)

FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "error"}


@bp.get("/v1/models")
def models():
    created = int(time.time())
    return jsonify({"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "rkllama-bridge"}
                                               for n in service().store.names()]})


def chat_fields(body: dict) -> dict:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return {"max_new_tokens": max_tokens, "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "seed": body.get("seed"), "frequency_penalty": body.get("frequency_penalty"),
            "presence_penalty": body.get("presence_penalty"), "top_k": body.get("top_k"),
            "repeat_penalty": body.get("repeat_penalty")}


@bp.post("/v1/chat/completions")
def chat_completions():
    body = json_body()
    messages = messages_field(body)
    stops = stop_list(body.get("stop"))
    stream = optional_bool(body, "stream", False)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(
        body.get("stream_options"), dict) else False
    generation, stored = start_chat(model_field(body, "model"), messages, chat_fields(body))
    cid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), stored.name
    pieces = text_pieces(generation, stops)
    if not stream:
        text, done = collect(pieces)
        return jsonify({"id": cid, "object": "chat.completion", "created": created, "model": name,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": FINISH[done.finish_reason]}],
                        "usage": _usage(done)})

    def chunk(delta: dict, finish=None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def events():
        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            if piece.text:
                yield chunk({"content": piece.text})
            if piece.done:
                if piece.done.finish_reason == "error":
                    yield {"error": piece.done.error}
                yield chunk({}, FINISH[piece.done.finish_reason])
                if include_usage:
                    yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                           "choices": [], "usage": _usage(piece.done)}

    def sse():
        for item in events():
            yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode("utf-8")
        yield b"data: [DONE]\n\n"

    return streaming(sse(), generation, "text/event-stream")


def _usage(done) -> dict:
    return {k: done.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
