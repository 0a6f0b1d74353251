"""Ollama-shaped routes (``/api/*``), as rkllama serves them for Ollama clients such as Open WebUI."""

from __future__ import annotations

import datetime
import time

from flask import Blueprint, jsonify

from ..errors import BadRequest
from ..params import messages_field, optional_bool, optional_str
from .common import (collect, json_body, model_field, ndjson, now_iso, service, start_chat, stop_list, streaming,
                     text_pieces, client_gone_probe)

bp = Blueprint("ollama", __name__)


def _details(stored) -> dict:
    weights = str(stored.modelfile.get("FROM"))
    return {"format": weights.rsplit(".", 1)[-1] if "." in weights else "hf", "family": "", "parameter_size": "",
            "quantization_level": ""}


def _model_entry(name: str) -> dict:
    stored = service().store.get(name)
    mtime = (stored.directory / "Modelfile").stat().st_mtime
    return {"name": name, "model": name, "size": stored.size_bytes(), "digest": "", "details": _details(stored),
            "modified_at": datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat()}


@bp.get("/api/tags")
def tags():
    return jsonify({"models": [_model_entry(n) for n in service().store.names()]})


@bp.get("/api/ps")
def ps():
    out = []
    for entry in service().loaded():
        item = _model_entry(entry.name)
        item.update({"size_vram": int(entry.memory_mb * 2**20), "instances": len(entry.queue.handles),
                     "loaded_at": datetime.datetime.fromtimestamp(entry.loaded_at, datetime.timezone.utc).isoformat(),
                     "expires_at": None})
        out.append(item)
    return jsonify({"models": out})


@bp.get("/api/version")
def version():
    from .. import __version__

    return jsonify({"version": __version__})


def _fields(body: dict) -> tuple:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object", code="invalid_parameter")
    fields = {"max_new_tokens": options.get("num_predict"), "temperature": options.get("temperature"),
              "top_k": options.get("top_k"), "top_p": options.get("top_p"),
              "repeat_penalty": options.get("repeat_penalty"), "seed": options.get("seed"),
              "frequency_penalty": options.get("frequency_penalty"),
              "presence_penalty": options.get("presence_penalty")}
    if fields["max_new_tokens"] is not None and fields["max_new_tokens"] == -1:
        fields["max_new_tokens"] = None  # Ollama's "until the context is full": the Modelfile default
    return fields, stop_list(options.get("stop"))


def _final(name: str, done, started: float, key: str) -> dict:
    t = done.timings or {}
    total = time.monotonic() - started
    return {"model": name, "created_at": now_iso(), key: ({"role": "assistant", "content": ""} if key == "message" else ""),
            "done": True, "done_reason": done.finish_reason, "total_duration": int(total * 1e9),
            "load_duration": 0, "prompt_eval_count": done.usage.get("prompt_tokens", 0),
            "prompt_eval_duration": int(t.get("prefill_ms", 0) * 1e6),
            "eval_count": done.usage.get("completion_tokens", 0),
            "eval_duration": int(max(0.0, total * 1e9 - t.get("ttft_ms", 0) * 1e6))}


def _respond(name: str, generation, stops, stream: bool, key: str):
    started = time.monotonic()

    def piece_obj(text: str) -> dict:
        value = {"role": "assistant", "content": text} if key == "message" else text
        return {"model": name, "created_at": now_iso(), key: value, "done": False}

    pieces = text_pieces(generation, stops)
    if not stream:
        text, done = collect(pieces)
        final = _final(name, done, started, key)
        final[key] = {"role": "assistant", "content": text} if key == "message" else text
        return jsonify(final)

    def lines():
        for piece in pieces:
            if piece.text:
                yield piece_obj(piece.text)
            if piece.done:
                yield _final(name, piece.done, started, key)

    return streaming(ndjson(lines()), generation, "application/x-ndjson")


@bp.post("/api/chat")
def chat():
    body = json_body()
    messages = messages_field(body)
    fields, stops = _fields(body)
    stream = optional_bool(body, "stream", True)
    generation, stored = start_chat(model_field(body, "model"), messages, fields)
    return _respond(stored.name, generation, stops, stream, "message")


@bp.post("/api/generate")
def generate():
    body = json_body()
    prompt = optional_str(body, "prompt")
    if not prompt:
        raise BadRequest("'prompt' must be a non-empty string", code="invalid_prompt")
    fields, stops = _fields(body)
    stream = optional_bool(body, "stream", True)
    svc = service()
    if optional_bool(body, "raw", False):
        name = svc.resolve_model(model_field(body, "model"))
        stored = svc.load(name).stored
        prompt_ids = stored.tokenizer.encode(prompt)
        params = svc.params_for(stored, fields, len(prompt_ids))
        generation = svc.start(name, prompt_ids, params, client_gone_probe())
    else:
        messages = [{"role": "user", "content": prompt}]
        system = optional_str(body, "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
        generation, stored = start_chat(model_field(body, "model"), messages, fields)
    return _respond(stored.name, generation, stops, stream, "response")
