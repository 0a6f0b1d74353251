"""The native protocol: token ids in, one NDJSON line per token out, with timings; tokenizer access so
clients (the exo engine) can template and decode exactly as the bridge does."""

from __future__ import annotations

from typing import List, Optional

from flask import Blueprint, jsonify, send_file

from ..errors import BadRequest, ModelNotFound
from ..image_prompts import from_token_ids
from ..params import messages_field, ollama_images, optional_bool, optional_str
from ..service import TokenEvent
from ..store import validate_name
from ..tokenizer import TOKENIZER_FILES
from .common import (
    client_gone_probe,
    json_body,
    model_field,
    ndjson,
    report_ignored,
    service,
    start_chat,
    streaming,
)

bp = Blueprint("native", __name__)

_PARAM_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "repeat_penalty", "seed",
                 "frequency_penalty", "presence_penalty")


def _stored(name: str):
    return service().store.get(validate_name(name))


def _prompt_ids(body: dict) -> Optional[List[int]]:
    """The body's ``prompt_token_ids`` (None when it gives ``messages``), checked before any model loads,
    so a malformed or empty request (e.g. a client probing for the route) never loads or evicts one."""
    if "prompt_token_ids" in body:
        ids = body["prompt_token_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("'prompt_token_ids' must be a list of integers", code="invalid_token_ids")
        return ids
    if "messages" not in body:
        raise BadRequest("give 'prompt_token_ids' or 'messages'", code="invalid_prompt")
    return None


def _positions(body: dict) -> list:
    positions = body.get("image_positions")
    if not isinstance(positions, list):
        raise BadRequest("'image_positions' (one index into prompt_token_ids per image) is required with 'images'",
                         code="invalid_image_positions", param="image_positions")
    return positions


@bp.post("/v1/generate")
def generate():
    body = json_body()
    svc = service()
    ids = _prompt_ids(body)
    fields = {k: body.get(k) for k in _PARAM_FIELDS}
    ignored = report_ignored(fields)
    name = svc.resolve_model(model_field(body, "model"))
    stored = svc.load(name).stored
    images = ollama_images(body.get("images"), "images", "images")
    if ids is not None:
        prompt = None
        if images:  # token ids with image positions: the client templated the conversation
            encoded = svc.images.encode(stored, images, "images")
            prompt = from_token_ids(stored, ids, _positions(body), encoded,
                                    lambda part: stored.tokenizer.decode(part, skip_special_tokens=False))
        params = svc.params_for(stored, fields, len(ids) + (prompt.n_image_tokens if prompt else 0),
                                prompt.n_image_tokens if prompt else 0)
        generation = svc.start(name, ids, params, client_gone_probe(), keep_alive=svc.keep_alive_field(
            body.get("keep_alive")), images=prompt)
    elif images:
        raise BadRequest("top-level 'images' go with 'prompt_token_ids' and 'image_positions'; with 'messages' "
                         "put each message's images in it", code="invalid_image", param="images")
    else:
        generation, _ = start_chat(name, messages_field(body), fields, body)

    def lines():
        for event in generation:
            if isinstance(event, TokenEvent):
                yield {"token_id": event.token_id, "text": event.text}
            else:
                done = {"done": True, "finish_reason": event.finish_reason, "usage": event.usage,
                        "timings": event.timings}
                if event.error:
                    done["error"] = event.error
                if ignored:
                    done["warnings"] = [f"{k} ignored: the runtime takes it from the Modelfile at load time"
                                        for k in ignored]
                yield done

    return streaming(ndjson(lines()), generation, "application/x-ndjson")


@bp.post("/v1/tokenize")
def tokenize():
    body = json_body()
    svc = service()
    stored = svc.store.get(svc.resolve_model(model_field(body, "model")))
    if "messages" in body:
        ids = svc.chat_prompt_ids(stored, messages_field(body),
                                  add_generation_prompt=optional_bool(body, "add_generation_prompt", True))
    else:
        text = optional_str(body, "text")
        if text is None:
            raise BadRequest("give 'text' or 'messages'", code="invalid_prompt")
        ids = svc.encode_text(stored, text)
    return jsonify({"model": stored.name, "token_ids": ids, "count": len(ids)})


@bp.post("/v1/detokenize")
def detokenize():
    body = json_body()
    svc = service()
    stored = svc.store.get(svc.resolve_model(model_field(body, "model")))
    ids = body.get("token_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest("'token_ids' must be a list of integers", code="invalid_token_ids")
    skip = optional_bool(body, "skip_special_tokens", True)
    return jsonify({"model": stored.name, "text": stored.tokenizer.decode(ids, skip_special_tokens=skip)})


@bp.get("/v1/models/<name>")
def model_info(name: str):
    stored = _stored(name)
    mf = stored.modelfile
    return jsonify({
        "id": stored.name, "object": "model", "owned_by": "rkllama-bridge",
        "created": int((stored.directory / "Modelfile").stat().st_mtime), "num_ctx": stored.num_ctx,
        "hf_repo": stored.hf_repo,
        "eos_token_ids": stored.tokenizer.eos_token_ids, "vocab_size": stored.tokenizer.vocab_size,
        "system": stored.system_prompt,
        "defaults": {"temperature": mf.get("TEMPERATURE"), "top_k": mf.get("TOP_K"), "top_p": mf.get("TOP_P"),
                     "repeat_penalty": mf.get("REPEAT_PENALTY"), "max_new_tokens": mf.get("MAX_NEW_TOKENS")},
        "loaded": any(e.name == stored.name for e in service().loaded()),
        "capabilities": {"runtime": service().runtime.name,
                         "per_request_params": sorted(service().runtime.per_request_params()),
                         "max_new_tokens": True},
    })


def _tokenizer_files(stored) -> dict:
    found = {}
    for fname in TOKENIZER_FILES:
        for candidate in (stored.directory / fname, stored.directory / str(stored.modelfile.get("FROM")) / fname):
            if candidate.is_file():
                found[fname] = candidate
                break
    return found


@bp.get("/v1/models/<name>/tokenizer")
def tokenizer_index(name: str):
    stored = _stored(name)
    return jsonify({"model": stored.name, "hf_repo": stored.hf_repo, "files": sorted(_tokenizer_files(stored)),
                    "eos_token_ids": stored.tokenizer.eos_token_ids})


@bp.get("/v1/models/<name>/tokenizer/<fname>")
def tokenizer_file(name: str, fname: str):
    stored = _stored(name)
    path = _tokenizer_files(stored).get(fname)  # only listed names: no path can escape the model dir
    if path is None:
        raise ModelNotFound(f"model {stored.name} has no tokenizer file {fname[:80]!r}", code="file_not_found")
    return send_file(path, mimetype="application/octet-stream", max_age=0)
