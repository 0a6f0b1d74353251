"""The bridge's OpenAPI 3 document, served at ``GET /openapi.json``.

The document lists every route of the app (a test keeps the two in step). With ``--token`` every route
but ``/health`` needs ``Authorization: Bearer <token>``, ``/openapi.json`` included; the document says so
through its ``bearer`` security scheme.
"""

from __future__ import annotations

from typing import Any, Dict

from flask import Blueprint, current_app, jsonify

from rk_common import openai_chat
from rk_common.openapi import ANY_OBJECT, JSON, NDJSON, OPENAI_ERROR, SSE, auth_description, document, obj, op

from . import __version__
from .params import SAMPLING as SAMPLING_SPECS

bp = Blueprint("openapi", __name__)

IMAGE_BLUEPRINT = "text_to_image"  # registered when the image routes are mounted (the default)
IMAGE_PREFIX = "/image"  # where server.mount_images puts them (image_engine.app.mount_image_routes' default)

MODEL_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
READINESS = ("ready", "loading", "stopping")
INTEGER = {"type": "integer"}
BASE64_IMAGES = {"type": "array", "items": {"type": "string", "format": "byte"}}
# Ollama's messages may carry their images (base64) beside the content
MESSAGES = {"type": "array", "minItems": 1, "items": {**openai_chat.MESSAGE, "properties": {
    **openai_chat.MESSAGE.get("properties", {}), "images": BASE64_IMAGES}}}
STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]}
SAMPLING = {name: spec.schema() for name, spec in SAMPLING_SPECS.items()}
EMBED_INPUT = {"anyOf": [{"type": "string", "minLength": 1},
                         {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 64}]}
OLLAMA_OPTIONS = obj(num_predict=INTEGER, stop=STOP, **SAMPLING)


def _paths() -> Dict[str, Dict[str, Any]]:
    gen_body = obj(("prompt_token_ids",), model=MODEL_NAME, prompt_token_ids={
        "type": "array", "items": {"type": "integer", "minimum": 0}},
        messages=MESSAGES, max_new_tokens=INTEGER, images=BASE64_IMAGES,
        image_positions={"type": "array", "items": {"type": "integer", "minimum": 0}}, **SAMPLING)
    ollama_body = dict(model=MODEL_NAME, stream={"type": "boolean"}, options=OLLAMA_OPTIONS)
    names = obj(("models",), models={"type": "array", "items": {"type": "string"}})
    message = obj(("message",), message={"type": "string"})
    return {
        "/": {"get": op("service banner", {JSON: obj(("message",), message={"type": "string"})})},
        "/models": {"get": op("model names (rkllama)", {JSON: names})},
        "/load_model": {"post": op("load a model", {JSON: message}, obj(("model_name",), model_name=MODEL_NAME))},
        "/unload_model": {"post": op("unload a model (default: the current one)", {JSON: message},
                                      obj(model_name=MODEL_NAME), body_optional=True)},
        "/current_model": {"get": op("the most recently loaded model",
                                      {JSON: obj(("model_name",), model_name={"type": "string"})})},
        "/generate": {"post": op("chat (rkllama shape); stream is text/plain of JSON chunks",
                                  {JSON: obj(("choices",), choices={"type": "array"}), "text/plain": {}},
                                  obj(("messages",), model=MODEL_NAME, messages=MESSAGES,
                                       stream={"type": "boolean"}, max_new_tokens=INTEGER,
                                       temperature=SAMPLING["temperature"], seed=SAMPLING["seed"]))},
        "/current_models": {"get": op("loaded models (rkllama; the same entries as /api/ps)",
                                       {JSON: obj(("models",), models={"type": "array"})})},
        "/unload_models": {"post": op("unload every model", {JSON: message})},
        "/rm": {"delete": op("delete a model from the store (rkllama); unloaded first", {JSON: message},
                             obj(("model",), model=MODEL_NAME))},
        "/pull": {"post": op("not supported: answers 501 saying how to add a model offline", {JSON: ANY_OBJECT},
                             ANY_OBJECT, body_optional=True)},
        "/api/show": {"post": op("a model's Modelfile, parameters, template and model_info (Ollama)",
                                 {JSON: obj(("modelfile", "details", "model_info"))},
                                 obj(model=MODEL_NAME, name=MODEL_NAME))},
        "/api/delete": {"delete": op("delete a model from the store (Ollama)",
                                     {JSON: obj(("status",), status={"type": "string"})},
                                     obj(model=MODEL_NAME, name=MODEL_NAME))},
        "/api/pull": {"post": op("not supported: answers 501 saying how to add a model offline",
                                 {JSON: ANY_OBJECT}, ANY_OBJECT, body_optional=True)},
        "/v1/completions": {"post": op("text completion (OpenAI legacy); SSE ending in 'data: [DONE]' when "
                                       "stream is true", {JSON: obj(("id", "object", "choices")), SSE: {}},
                                       obj(("prompt",), model=MODEL_NAME, prompt={"anyOf": [
                                           {"type": "string", "minLength": 1},
                                           {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                            "maxItems": 1}]}, stream={"type": "boolean"},
                                           max_tokens=INTEGER, stop=STOP,
                                           stream_options=obj(include_usage={"type": "boolean"}),
                                           **SAMPLING), error=OPENAI_ERROR)},
        "/api/embed": {"post": op("embeddings (Ollama): mean-pooled last hidden layer, one vector per input",
                                  {JSON: obj(("embeddings",), embeddings={"type": "array"})},
                                  obj(("input",), model=MODEL_NAME, input=EMBED_INPUT))},
        "/api/embeddings": {"post": op("embedding of one prompt (Ollama's older route)",
                                       {JSON: obj(("embedding",), embedding={"type": "array"})},
                                       obj(("prompt",), model=MODEL_NAME, prompt={"type": "string", "minLength": 1}))},
        "/v1/embeddings": {"post": op("embeddings (OpenAI)", {JSON: obj(("object", "data"), data={"type": "array"})},
                                      obj(("input",), model=MODEL_NAME, input=EMBED_INPUT), error=OPENAI_ERROR)},
        "/api/tags": {"get": op("models (Ollama)", {JSON: obj(("models",), models={"type": "array"})})},
        "/api/ps": {"get": op("loaded models (Ollama)", {JSON: obj(("models",), models={"type": "array"})})},
        "/api/version": {"get": op("version", {JSON: obj(("version",), version={"type": "string"})})},
        "/api/chat": {"post": op("chat (Ollama); NDJSON when stream is true (the default)",
                                  {JSON: obj(("message", "done")), NDJSON: {}},
                                  obj(("messages",), messages=MESSAGES, **ollama_body))},
        "/api/generate": {"post": op("completion (Ollama); NDJSON when stream is true (the default)",
                                      {JSON: obj(("response", "done")), NDJSON: {}},
                                      obj(("prompt",), prompt={"type": "string", "minLength": 1},
                                           system={"type": "string"}, raw={"type": "boolean"}, images=BASE64_IMAGES,
                                           **ollama_body))},
        "/v1/models": {"get": op("models (OpenAI)", {JSON: obj(("object", "data"), data={"type": "array"})})},
        "/v1/chat/completions": {"post": openai_chat.operation(
            "chat completion (OpenAI); SSE ending in 'data: [DONE]' when stream is true", model=MODEL_NAME,
            top_k=SAMPLING["top_k"], repeat_penalty=SAMPLING["repeat_penalty"])},
        "/v1/generate": {"post": op("token ids in, one NDJSON line per token out, then a summary line",
                                     {NDJSON: {}}, gen_body)},
        "/v1/tokenize": {"post": op("text or messages to token ids", {JSON: obj(
            ("model", "token_ids", "count"), model={"type": "string"}, count=INTEGER,
            token_ids={"type": "array", "items": INTEGER})}, obj(model=MODEL_NAME, text={"type": "string"},
                                                                   messages=MESSAGES,
                                                                   add_generation_prompt={"type": "boolean"}))},
        "/v1/detokenize": {"post": op("token ids to text", {JSON: obj(("model", "text"), text={"type": "string"})},
                                       obj(("token_ids",), model=MODEL_NAME, skip_special_tokens={"type": "boolean"},
                                            token_ids={"type": "array", "items": {"type": "integer", "minimum": 0}}))},
        "/v1/models/{name}": {"get": op("one model's settings and tokenizer facts", {JSON: obj(
            ("id", "num_ctx", "eos_token_ids"), id={"type": "string"}, num_ctx=INTEGER,
            eos_token_ids={"type": "array", "items": INTEGER})}, params=("name",))},
        "/v1/models/{name}/tokenizer": {"get": op("the model's tokenizer file names", {JSON: obj(
            ("model", "files"), files={"type": "array", "items": {"type": "string"}})}, params=("name",))},
        "/v1/models/{name}/tokenizer/{fname}": {"get": op("one tokenizer file", {
            "application/octet-stream": {"type": "string", "format": "binary"}}, params=("name", "fname"))},
        "/health": {"get": op("liveness (open without the token)", {JSON: obj(
            ("status", "models"), status={"type": "string", "enum": ["ok"]}, models={"type": "array"},
            readiness={"type": "string", "enum": list(READINESS)})})},
        "/health/ready": {"get": op("readiness (open without the token): 200 ready, 503 loading or stopping",
                                    {JSON: obj(("status",), status={"type": "string", "enum": list(READINESS)})})},
        "/metrics": {"get": op("Prometheus metrics", {"text/plain": {"type": "string"}})},
        "/openapi.json": {"get": op("this document", {JSON: ANY_OBJECT})},
    }


def _image_paths() -> Dict[str, Dict[str, Any]]:
    """The image service's operations as the bridge mounts them (under ``/image``)."""
    from image_engine.openapi import build_spec as image_spec

    return {IMAGE_PREFIX + path: ops for path, ops in image_spec()["paths"].items()
            if path not in ("/health", "/openapi.json")}


def build_spec(images: bool = False) -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the bridge's routes; with ``images``, also the image routes it mounts."""
    paths = _paths()
    if images:
        paths.update(_image_paths())
    return document("rkllama-bridge", __version__,
                    auth_description("rkllama, Ollama, OpenAI and native routes over RKLLM."), paths)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_spec(images=IMAGE_BLUEPRINT in current_app.blueprints))
