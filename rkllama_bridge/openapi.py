"""The bridge's OpenAPI 3 document, served at ``GET /openapi.json``.

The document lists every route of the app (a test keeps the two in step). With ``--token`` every route
but ``/health`` needs ``Authorization: Bearer <token>``, ``/openapi.json`` included; the document says so
through its ``bearer`` security scheme.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from flask import Blueprint, current_app, jsonify

from . import __version__

bp = Blueprint("openapi", __name__)

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
OPEN_ROUTES = {("get", "/health")}
IMAGE_BLUEPRINT = "text_to_image"  # registered when the image routes are mounted (the default)
IMAGE_PREFIX = "/image"  # where server.mount_images puts them (image_engine.app.mount_image_routes' default)

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
MODEL_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
    "content": {"anyOf": [{"type": "string", "nullable": True}, {"type": "array", "items": {
        "type": "object", "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}}]}}}
MESSAGES = {"type": "array", "minItems": 1, "items": MESSAGE}
STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]}
SAMPLING = {"temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER, "seed": INTEGER,
            "repeat_penalty": NUMBER, "frequency_penalty": NUMBER, "presence_penalty": NUMBER}
OLLAMA_OPTIONS = {"type": "object", "properties": {"num_predict": INTEGER, "stop": STOP, **SAMPLING}}
ANY_OBJECT = {"type": "object"}


def _obj(required=(), **props) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def _op(summary: str, ok: Dict[str, Any], body: Optional[Dict[str, Any]] = None,
        params=(), body_optional: bool = False) -> Dict[str, Any]:
    """One operation: ``ok`` maps media types to the 200 schema; every error answers the ERROR shape."""
    op: Dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "success", "content": {mt: {"schema": s} for mt, s in ok.items()}},
        "default": {"description": "an error", "content": {JSON: {"schema": ERROR}}}}}
    if body is not None:
        op["requestBody"] = {"required": not body_optional, "content": {JSON: {"schema": body}}}
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                            for p in params]
    return op


def _paths() -> Dict[str, Dict[str, Any]]:
    gen_body = _obj(("prompt_token_ids",), model=MODEL_NAME, prompt_token_ids={
        "type": "array", "items": {"type": "integer", "minimum": 0}},
        messages=MESSAGES, max_new_tokens=INTEGER, **SAMPLING)
    chat_ok = _obj(("id", "object", "choices"), id={"type": "string"}, object={"type": "string"},
                   model={"type": "string"}, choices={"type": "array"}, usage=ANY_OBJECT)
    ollama_body = dict(model=MODEL_NAME, stream={"type": "boolean"}, options=OLLAMA_OPTIONS)
    names = _obj(("models",), models={"type": "array", "items": {"type": "string"}})
    message = _obj(("message",), message={"type": "string"})
    return {
        "/": {"get": _op("service banner", {JSON: _obj(("message",), message={"type": "string"})})},
        "/models": {"get": _op("model names (rkllama)", {JSON: names})},
        "/load_model": {"post": _op("load a model", {JSON: message}, _obj(("model_name",), model_name=MODEL_NAME))},
        "/unload_model": {"post": _op("unload a model (default: the current one)", {JSON: message},
                                      _obj(model_name=MODEL_NAME), body_optional=True)},
        "/current_model": {"get": _op("the most recently loaded model",
                                      {JSON: _obj(("model_name",), model_name={"type": "string"})})},
        "/generate": {"post": _op("chat (rkllama shape); stream is text/plain of JSON chunks",
                                  {JSON: _obj(("choices",), choices={"type": "array"}), "text/plain": {}},
                                  _obj(("messages",), model=MODEL_NAME, messages=MESSAGES,
                                       stream={"type": "boolean"}, max_new_tokens=INTEGER,
                                       temperature=NUMBER, seed=INTEGER))},
        "/api/tags": {"get": _op("models (Ollama)", {JSON: _obj(("models",), models={"type": "array"})})},
        "/api/ps": {"get": _op("loaded models (Ollama)", {JSON: _obj(("models",), models={"type": "array"})})},
        "/api/version": {"get": _op("version", {JSON: _obj(("version",), version={"type": "string"})})},
        "/api/chat": {"post": _op("chat (Ollama); NDJSON when stream is true (the default)",
                                  {JSON: _obj(("message", "done")), NDJSON: {}},
                                  _obj(("messages",), messages=MESSAGES, **ollama_body))},
        "/api/generate": {"post": _op("completion (Ollama); NDJSON when stream is true (the default)",
                                      {JSON: _obj(("response", "done")), NDJSON: {}},
                                      _obj(("prompt",), prompt={"type": "string", "minLength": 1},
                                           system={"type": "string"}, raw={"type": "boolean"}, **ollama_body))},
        "/v1/models": {"get": _op("models (OpenAI)", {JSON: _obj(("object", "data"), data={"type": "array"})})},
        "/v1/chat/completions": {"post": _op(
            "chat completion (OpenAI); SSE ending in 'data: [DONE]' when stream is true", {JSON: chat_ok, SSE: {}},
            _obj(("messages",), model=MODEL_NAME, messages=MESSAGES, stream={"type": "boolean"}, stop=STOP,
                 max_tokens=INTEGER, max_completion_tokens=INTEGER, **SAMPLING))},
        "/v1/generate": {"post": _op("token ids in, one NDJSON line per token out, then a summary line",
                                     {NDJSON: {}}, gen_body)},
        "/v1/tokenize": {"post": _op("text or messages to token ids", {JSON: _obj(
            ("model", "token_ids", "count"), model={"type": "string"}, count=INTEGER,
            token_ids={"type": "array", "items": INTEGER})}, _obj(model=MODEL_NAME, text={"type": "string"},
                                                                   messages=MESSAGES,
                                                                   add_generation_prompt={"type": "boolean"}))},
        "/v1/detokenize": {"post": _op("token ids to text", {JSON: _obj(("model", "text"), text={"type": "string"})},
                                       _obj(("token_ids",), model=MODEL_NAME, skip_special_tokens={"type": "boolean"},
                                            token_ids={"type": "array", "items": {"type": "integer", "minimum": 0}}))},
        "/v1/models/{name}": {"get": _op("one model's settings and tokenizer facts", {JSON: _obj(
            ("id", "num_ctx", "eos_token_ids"), id={"type": "string"}, num_ctx=INTEGER,
            eos_token_ids={"type": "array", "items": INTEGER})}, params=("name",))},
        "/v1/models/{name}/tokenizer": {"get": _op("the model's tokenizer file names", {JSON: _obj(
            ("model", "files"), files={"type": "array", "items": {"type": "string"}})}, params=("name",))},
        "/v1/models/{name}/tokenizer/{fname}": {"get": _op("one tokenizer file", {
            "application/octet-stream": {"type": "string", "format": "binary"}}, params=("name", "fname"))},
        "/health": {"get": _op("liveness (open without the token)", {JSON: _obj(
            ("status", "models"), status={"type": "string", "enum": ["ok"]}, models={"type": "array"})})},
        "/metrics": {"get": _op("Prometheus metrics", {"text/plain": {"type": "string"}})},
        "/openapi.json": {"get": _op("this document", {JSON: ANY_OBJECT})},
    }


def _image_paths() -> Dict[str, Dict[str, Any]]:
    """The image service's operations as the bridge mounts them (under ``/image``)."""
    from image_engine.openapi import build_spec as image_spec

    return {IMAGE_PREFIX + path: ops for path, ops in image_spec()["paths"].items()
            if path not in ("/health", "/openapi.json")}


def document(title: str, version: str, description: str, paths: Dict[str, Dict[str, Any]],
             error_schema: Dict[str, Any], open_routes=OPEN_ROUTES) -> Dict[str, Any]:
    """An OpenAPI 3.0 document around ``paths``: every operation needs the bearer token except
    ``open_routes`` ((method, path) pairs). Shared by the bridge and the gateway."""
    for path, ops in paths.items():
        for method, op in ops.items():
            ops[method] = {**op, "security": [] if (method, path) in open_routes else [{"bearer": []}]}
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": description},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": error_schema}},
        "paths": paths,
    }


def build_spec(images: bool = False) -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the bridge's routes; with ``images``, also the image routes it mounts."""
    paths = _paths()
    if images:
        paths.update(_image_paths())
    return document("rkllama-bridge", __version__,
                    "rkllama, Ollama, OpenAI and native routes over RKLLM. When the bridge runs with --token, every "
                    "route except GET /health (this document included) needs 'Authorization: Bearer <token>'; "
                    "errors are {\"error\": {\"code\", \"message\"}}.", paths, ERROR)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_spec(images=IMAGE_BLUEPRINT in current_app.blueprints))
