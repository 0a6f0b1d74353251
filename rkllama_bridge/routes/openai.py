"""OpenAI-shaped routes: ``/v1/models`` and ``/v1/chat/completions`` (JSON, or SSE ending in [DONE]).

The request, the reply and its chunks are :mod:`rk_common.openai_chat`, shared with the gateway so the
two cannot disagree. Beyond the basic shape: ``<think>`` blocks come back as ``reasoning_content``;
``tools`` / ``tool_choice`` are shown to the model through its chat template and Qwen/Hermes
``<tool_call>`` output comes back as ``tool_calls`` with ``finish_reason: "tool_calls"``; ``truncate``
("left"), ``keep_alive``, ``top_k`` and ``repeat_penalty`` are accepted as on the Ollama routes; cached
prompt tokens (prefix reuse) are reported in ``usage.prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify

from rk_common.openai_chat import (
    SSE_DONE,
    ChatReply,
    ChatRequest,
    TextCompletionReply,
    parse_chat_request,
    parse_completion_request,
    sse,
)
from rk_common.reply_shaping import chat_inputs, prompt_opens_think

from .common import (
    client_gone_probe,
    collect,
    embed_inputs,
    json_body,
    model_field,
    report_ignored,
    service,
    speed_stats,
    streaming,
    text_pieces,
)

bp = Blueprint("openai", __name__)


@bp.get("/v1/models")
def models():
    created = int(time.time())
    return jsonify({"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "rkllama-bridge"}
        for n in service().store.names()]})


def chat_fields(req: ChatRequest, body: dict) -> dict:
    """The generation fields: OpenAI's (checked already) and the bridge's own sampling extensions."""
    return {"max_new_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
            "seed": req.seed, "frequency_penalty": req.frequency_penalty,
            "presence_penalty": req.presence_penalty, "top_k": body.get("top_k"),
            "repeat_penalty": body.get("repeat_penalty")}


def start_tool_chat(body: dict, messages, fields: dict, tools):
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
    req = parse_chat_request(body)
    generation, stored, opened = start_tool_chat(body, req.messages, chat_fields(req, body), req.tools)
    reply = ChatReply(stored.name, tools=bool(req.tools), opened=opened, include_usage=req.include_usage)
    pieces = text_pieces(generation, req.stop)
    if not req.stream:
        text, done = collect(pieces)
        out = reply.completion(text, done.finish_reason, speed_stats(generation, done.usage))
        if generation.dropped_messages:
            out["truncated_messages"] = generation.dropped_messages
        return jsonify(out)

    def events():
        yield sse(reply.first_chunk())
        for piece in pieces:
            for item in reply.push(piece.text):
                yield sse(item)
            if piece.done:
                error = piece.done.error if piece.done.finish_reason == "error" else None
                usage = speed_stats(generation, piece.done.usage)
                for item in reply.finish(piece.done.finish_reason, usage, error):
                    yield sse(item)
        yield SSE_DONE

    return streaming(events(), generation, "text/event-stream")


@bp.post("/v1/completions")
def completions():
    """OpenAI's legacy text completion: the prompt goes to the model as it is (no chat template)."""
    body = json_body()
    prompt, req = parse_completion_request(body)
    svc = service()
    fields = chat_fields(req, body)
    report_ignored(fields)
    name = svc.resolve_model(model_field(body, "model"))
    keep = svc.keep_alive_field(body.get("keep_alive"))
    stored = svc.load(name, keep).stored
    ids = svc.encode_text(stored, prompt)
    generation = svc.start(name, ids, svc.params_for(stored, fields, len(ids)), client_gone_probe(),
                           keep_alive=keep)
    reply = TextCompletionReply(stored.name)
    pieces = text_pieces(generation, req.stop)
    if not req.stream:
        text, done = collect(pieces)
        return jsonify(reply.completion(text, done.finish_reason, speed_stats(generation, done.usage)))

    def events():
        for piece in pieces:
            if piece.text:
                yield sse(reply.chunk(piece.text))
            if piece.done:
                error = piece.done.error if piece.done.finish_reason == "error" else None
                for item in reply.finish(piece.done.finish_reason, speed_stats(generation, piece.done.usage),
                                         req.include_usage, error):
                    yield sse(item)
        yield SSE_DONE

    return streaming(events(), generation, "text/event-stream")


@bp.post("/v1/embeddings")
def embeddings():
    """OpenAI's embeddings: one mean-pooled last-hidden-layer vector per input, with the token count."""
    name, texts, keep = embed_inputs(json_body(), "input")
    vectors, count = service().embed(name, texts, keep, client_gone_probe())
    return jsonify({"object": "list", "model": name, "usage": {"prompt_tokens": count, "total_tokens": count},
                    "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})
