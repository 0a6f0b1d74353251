"""Ollama-shaped routes (``/api/*``), as rkllama serves them for Ollama clients such as Open WebUI.

``keep_alive`` is honoured as Ollama does (a request without prompt/messages but with ``keep_alive``
only loads, or with 0 unloads, the model); ``truncate: "left"`` drops old turns to fit the context;
``/api/chat`` returns a ``<think>`` block as ``message.thinking`` and Qwen/Hermes tool calls as
``message.tool_calls`` when ``tools`` are given."""

from __future__ import annotations

import datetime
import json
import time

from flask import Blueprint, jsonify

from rk_common.chat_images import IMAGE_MARK
from rk_common.reply_shaping import REASONING, ReplyStream, shape_reply
from rk_common.tool_calls import validate_tools

from ..errors import BadRequest, PullUnsupported
from ..params import messages_field, ollama_images, optional_bool, optional_str
from .common import (
    client_gone_probe,
    collect,
    embed_inputs,
    json_body,
    model_field,
    ndjson,
    now_iso,
    report_ignored,
    service,
    stop_list,
    streaming,
    text_pieces,
)
from .openai import start_tool_chat

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
@bp.get("/current_models")
def ps():
    """Loaded models with the fields ``ollama ps`` (name, digest, size, size_vram, expires_at,
    context_length) and ``rkllama ps`` (details, loaded_at, last_call, expires_at) print."""
    out = []
    for entry in service().loaded():
        item = _model_entry(entry.name)
        expires = entry.expires_at
        item.update({"size_vram": int(entry.memory_mb * 2**20), "instances": len(entry.queue.handles),
                     "loaded_at": _iso(entry.loaded_at), "expires_at": None if expires is None else _iso(expires),
                     "keep_alive": "forever" if entry.keep_alive_s is None else f"{entry.keep_alive_s:g}s",
                     "last_call": _iso(getattr(entry, "last_used", None) or entry.loaded_at),
                     "context_length": service().store.get(entry.name).num_ctx})
        out.append(item)
    return jsonify({"models": out})


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def _hf_config(stored) -> dict:
    """The model's Hugging Face ``config.json`` when the store has one (its directory or ``FROM``'s)."""
    for candidate in (stored.directory / "config.json", stored.directory / str(stored.modelfile.get("FROM")) /
                      "config.json", stored.directory / "hf" / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _embedding_dim(svc, name: str):
    """The hidden size a loaded instance of ``name`` reported with its embeddings (None if none has)."""
    for entry in svc.loaded():
        if entry.name == name:
            for handle in entry.queue.handles:
                if getattr(handle, "embedding_dim", None):
                    return handle.embedding_dim
    return None


@bp.post("/api/show")
def show():
    """Ollama's model description: Modelfile, parameters, template, details and ``model_info`` with the
    context and embedding lengths (the hidden size the embedding routes return)."""
    body = json_body()
    svc = service()
    name = model_field(body, "model", "name")
    if not name:
        raise BadRequest("'model' is required", code="model_required")
    stored = svc.store.get(name)
    mf = stored.modelfile
    config = _hf_config(stored)
    arch = str(config.get("model_type") or "rkllm")
    info = {"general.architecture": arch, f"{arch}.context_length": stored.num_ctx}
    dim = _embedding_dim(svc, stored.name) or config.get("hidden_size")
    if dim:
        info[f"{arch}.embedding_length"] = int(dim)
    params = {"temperature": mf.get("TEMPERATURE"), "top_k": mf.get("TOP_K"), "top_p": mf.get("TOP_P"),
              "repeat_penalty": mf.get("REPEAT_PENALTY"), "num_predict": mf.get("MAX_NEW_TOKENS"),
              "num_ctx": stored.num_ctx}
    modelfile = (stored.directory / "Modelfile").read_text(encoding="utf-8", errors="replace")
    entry = _model_entry(stored.name)
    return jsonify({"modelfile": modelfile, "template": stored.tokenizer.chat_template or "",
                    "parameters": "\n".join(f"{k} {v}" for k, v in params.items() if v is not None),
                    "system": stored.system_prompt, "details": entry["details"], "model_info": info,
                    "modified_at": entry["modified_at"], "size": entry["size"], "name": stored.name,
                    "capabilities": ["completion"], "huggingface": {"repo_id": stored.hf_repo}})


@bp.delete("/api/delete")
def delete():
    """Ollama's removal: 200 (Ollama's body is empty, its clients read only the status), 404 for an unknown
    model. The client asks for the confirmation; the server deletes at once."""
    name = model_field(json_body(), "model", "name")
    if not name:
        raise BadRequest("'model' is required", code="model_required")
    service().delete_model(name)
    return jsonify({"status": "success"})


@bp.post("/api/embed")
def embed():
    """Ollama's embeddings: one mean-pooled last-hidden-layer vector per input."""
    arrived = time.monotonic()
    name, texts, keep = embed_inputs(json_body(), "input")
    vectors, count = service().embed(name, texts, keep, client_gone_probe())
    return jsonify({"model": name, "embeddings": vectors, "prompt_eval_count": count,
                    "total_duration": int((time.monotonic() - arrived) * 1e9), "load_duration": 0})


@bp.post("/api/embeddings")
def embeddings():
    """Ollama's older embeddings route: one ``prompt``, one ``embedding``."""
    name, texts, keep = embed_inputs(json_body(), "prompt")
    vectors, _ = service().embed(name, texts[:1], keep, client_gone_probe())
    return jsonify({"embedding": vectors[0]})


@bp.post("/api/pull")
def pull():
    raise PullUnsupported()


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


def _durations(generation, arrived: float) -> dict:
    """Ollama's durations in ns, from the request's arrival: ``load_duration`` the model load this request
    waited for, ``eval_duration`` first to last token (to the end of the run for a single token, so that
    ``eval_count / eval_duration`` is always defined)."""
    entry = generation.entry
    load = entry.load_seconds if entry.ready_at >= arrived else 0.0
    first, last, end = generation.token_times
    now = time.monotonic()
    if first is None:
        evaluation = 0.0
    else:
        evaluation = max((last if last is not None and last > first else end or now) - first, 1e-9)
    return {"total_duration": int((now - arrived) * 1e9), "load_duration": int(load * 1e9),
            "eval_duration": int(evaluation * 1e9)}


def _final(name: str, done, generation, arrived: float, key: str) -> dict:
    t = done.timings or {}
    empty = {"role": "assistant", "content": ""} if key == "message" else ""
    return {"model": name, "created_at": now_iso(), key: empty,
            "done": True, "done_reason": done.finish_reason, **_durations(generation, arrived),
            "prompt_eval_count": done.usage.get("prompt_tokens", 0),
            "prompt_eval_duration": int(t.get("prefill_ms", 0) * 1e6),
            "eval_count": done.usage.get("completion_tokens", 0)}


def _respond(name: str, generation, stops, stream: bool, key: str, arrived: float, opened: bool = False,
             tools: bool = False):
    pieces = text_pieces(generation, stops)
    if not stream:
        text, done = collect(pieces)
        final = _final(name, done, generation, arrived, key)
        if key == "message":
            final[key] = _message(shape_reply(text, opened, tools))
        else:
            final[key] = text
        return jsonify(final)

    def piece_obj(value) -> dict:
        return {"model": name, "created_at": now_iso(), key: value, "done": False}

    def parts_out(parts):
        for kind, text in parts:
            yield piece_obj({"role": "assistant", "content": "", "thinking": text} if kind == REASONING
                            else {"role": "assistant", "content": text})

    def lines():
        shaper = ReplyStream(opened, tools) if key == "message" else None
        for piece in pieces:
            if piece.text:
                yield from (parts_out(shaper.push(piece.text)) if shaper else [piece_obj(piece.text)])
            if piece.done and piece.done.finish_reason == "error":
                # Ollama ends a stream that fails with one {"error": "..."} line
                yield {"error": (piece.done.error or {}).get("message", "generation failed")}
                return
            if piece.done:
                if shaper:
                    parts, calls = shaper.finish()
                    yield from parts_out(parts)
                    if calls:
                        yield piece_obj({"role": "assistant", "content": "", "tool_calls": _ollama_calls(calls)})
                yield _final(name, piece.done, generation, arrived, key)

    return streaming(ndjson(lines()), generation, "application/x-ndjson")


def _message(reply) -> dict:
    message = {"role": "assistant", "content": reply.content}
    if reply.reasoning:
        message["thinking"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = _ollama_calls(reply.tool_calls)
    return message


def _ollama_calls(calls) -> list:
    """OpenAI tool calls in Ollama's shape (arguments as an object)."""
    out = []
    for c in calls:
        try:
            args = json.loads(c["function"]["arguments"])
        except ValueError:
            args = c["function"]["arguments"]
        out.append({"function": {"name": c["function"]["name"], "arguments": args}})
    return out


def _lifecycle_only(body: dict, key: str):
    """Ollama's load/unload request: no prompt or messages, only a model (and keep_alive)."""
    svc = service()
    name = svc.resolve_model(model_field(body, "model"))
    keep = svc.keep_alive_field(body.get("keep_alive"))
    if keep == 0:
        entry = next((e for e in svc.loaded() if e.name == name), None)
        if entry is not None and entry.serving:
            svc.load(name, 0)  # unloaded by the reaper once its requests are done
        else:
            svc.unload(name)
        reason = "unload"
    else:
        svc.load(name, keep)
        reason = "load"
    final = {"model": name, "created_at": now_iso(), key: ({"role": "assistant", "content": ""}
                                                          if key == "message" else ""),
             "done": True, "done_reason": reason}
    return jsonify(final)


@bp.post("/api/chat")
def chat():
    arrived = time.monotonic()
    body = json_body()
    if not body.get("messages") and "keep_alive" in body:
        return _lifecycle_only(body, "message")
    messages = messages_field(body)
    fields, stops = _fields(body)
    stream = optional_bool(body, "stream", True)
    tools = validate_tools(body.get("tools"), None)
    generation, stored, opened = start_tool_chat(body, messages, fields, tools)
    return _respond(stored.name, generation, stops, stream, "message", arrived, opened, bool(tools))


@bp.post("/api/generate")
def generate():
    arrived = time.monotonic()
    body = json_body()
    prompt = optional_str(body, "prompt")
    if not prompt and "keep_alive" in body:
        return _lifecycle_only(body, "response")
    if not prompt:
        raise BadRequest("'prompt' must be a non-empty string", code="invalid_prompt")
    fields, stops = _fields(body)
    stream = optional_bool(body, "stream", True)
    svc = service()
    keep = body.get("keep_alive")
    report_ignored(fields)
    images = ollama_images(body.get("images"), "images", "images")
    if images and optional_bool(body, "raw", False):
        raise BadRequest("'images' need the chat template: leave out 'raw'", code="invalid_image", param="images")
    if optional_bool(body, "raw", False):
        name = svc.resolve_model(model_field(body, "model"))
        stored = svc.load(name, svc.keep_alive_field(keep)).stored
        prompt_ids = svc.encode_text(stored, prompt)
        params = svc.params_for(stored, fields, len(prompt_ids))
        generation = svc.start(name, prompt_ids, params, client_gone_probe(), keep_alive=svc.keep_alive_field(keep))
    else:
        messages = [{"role": "user", "content": prompt}]
        if images:  # before the text, as Ollama puts them
            messages[0] = {"role": "user", "content": IMAGE_MARK * len(images) + prompt.replace(IMAGE_MARK, ""),
                           "images": images}
        system = optional_str(body, "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
        generation, stored = svc.start_chat(model_field(body, "model"), messages, fields, client_gone_probe(),
                                            truncate=body.get("truncate"), keep_alive=keep)
    return _respond(stored.name, generation, stops, stream, "response", arrived)
