"""rkllama-compatible routes, with the JSON shapes rkllama clients (and the earlier exo engine) expect."""

from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify, request

from ..errors import BadRequest, ModelNotFound, PullUnsupported
from ..params import messages_field, optional_bool
from .common import collect, json_body, model_field, service, speed_stats, start_chat, streaming, text_pieces

bp = Blueprint("rkllama", __name__)


@bp.get("/")
def welcome():
    return jsonify({"message": "rkllama-bridge: rkllama, Ollama and OpenAI APIs for Rockchip NPU boards",
                    "runtime": service().runtime.describe()})


@bp.get("/models")
def models():
    return jsonify({"models": service().store.names()})


@bp.post("/load_model")
def load_model():
    body = json_body()
    name = model_field(body, "model_name", "model")
    if not name:
        raise BadRequest("'model_name' is required", code="model_required")
    svc = service()
    already = any(e.name == name for e in svc.loaded())
    svc.load(name)
    return jsonify({"message": f"Model {name} is already loaded." if already else f"Model {name} loaded successfully."})


@bp.post("/unload_model")
def unload_model():
    svc = service()
    body = json_body() if request.get_data(cache=True) else {}
    name = model_field(body, "model_name", "model") or svc.current_model
    if not name:
        raise BadRequest("No model is currently loaded.", code="no_model_loaded")
    if not svc.unload(name):
        raise BadRequest(f"No model {name} is currently loaded.", code="no_model_loaded")
    return jsonify({"message": f"Model {name} successfully unloaded!"})


@bp.post("/unload_models")
def unload_models():
    svc = service()
    names = [e.name for e in svc.loaded()]
    for name in names:
        svc.unload(name)
    return jsonify({"message": "Models successfully unloaded!", "unloaded": names})


@bp.delete("/rm")
def remove_model():
    """rkllama's removal: the model's directory leaves the store (unloaded first). The client asks for the
    confirmation; the server deletes at once."""
    name = model_field(json_body(), "model", "name")
    if not name:
        raise BadRequest("Please specify a model.", code="model_required")
    service().delete_model(name)
    return jsonify({"message": "The model has been successfully deleted!"})


@bp.post("/pull")
def pull():
    raise PullUnsupported()


@bp.get("/current_model")
def current_model():
    name = service().current_model
    if not name:
        raise ModelNotFound("No model is currently loaded.", code="no_model_loaded")
    return jsonify({"model_name": name})


def _rkllm_chunk(content: str, finish_reason, usage: dict) -> dict:
    return {"id": "rkllm_chat", "object": "rkllm_chat", "created": int(time.time()),
            "choices": [{"role": "assistant", "content": content, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage}


@bp.post("/generate")
def generate():
    body = json_body()
    messages = body.get("messages")
    if isinstance(messages, str):  # rkllama also accepts a bare prompt here
        messages = [{"role": "user", "content": messages}]
        body = {**body, "messages": messages}
    messages = messages_field(body)
    stream = optional_bool(body, "stream", False)
    fields = {k: body.get(k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "repeat_penalty",
                                       "seed")}
    generation, _ = start_chat(model_field(body, "model", "model_name"), messages, fields, body)
    pieces = text_pieces(generation)
    if not stream:
        text, done = collect(pieces)
        return jsonify(_rkllm_chunk(text, done.finish_reason, speed_stats(generation, done.usage)))

    def chunks():
        usage = {"prompt_tokens": len(generation.prompt_ids), "completion_tokens": 0, "total_tokens": 0}
        for piece in pieces:
            usage = speed_stats(generation, piece.done.usage) if piece.done else {
                **usage, "completion_tokens": len(generation.completion_ids),
                "total_tokens": len(generation.prompt_ids) + len(generation.completion_ids), "tokens_per_second": 0}
            finish = piece.done.finish_reason if piece.done else None
            if piece.text or piece.done:
                yield (json.dumps(_rkllm_chunk(piece.text, finish, usage), ensure_ascii=False) + "\n\n").encode()

    return streaming(chunks(), generation, "text/plain")
