"""The OpenAPI 3 document of the ``exo-rk serve`` gateway, served at ``GET /openapi.json``.

Every route of the app is listed (a test keeps the two in step); the chat operation is the one the bridge
documents too (:func:`rk_common.openai_chat.operation`). With ``--api-token`` (or ``EXO_RK_API_TOKEN``)
every route but ``/health`` needs ``Authorization: Bearer <token>``, this document included.
"""

from __future__ import annotations

from typing import Any, Dict

from aiohttp import web

from exo_rk import __version__
from exo_rk.model_cards import IMAGE_MODEL_IDS
from rk_common import openai_chat
from rk_common.openapi import JSON, OPENAI_ERROR, auth_description, document, obj, op

IMAGE_BODY = obj(("prompt",), prompt={"type": "string", "minLength": 1},
                 model={"type": "string", "enum": sorted(IMAGE_MODEL_IDS)}, n={"type": "integer", "enum": [1]},
                 response_format={"type": "string", "enum": ["b64_json"]},
                 size={"type": "string", "pattern": "^[0-9]+x[0-9]+$"}, num_inference_steps={"type": "integer"},
                 guidance_scale={"type": "number"}, seed={"type": "integer"}, mode={"type": "string"})
EMBEDDINGS_BODY = obj(("input",), model={"type": "string"},
                      input={"oneOf": [{"type": "string", "minLength": 1},
                                       {"type": "array", "minItems": 1, "maxItems": 64,
                                        "items": {"type": "string", "minLength": 1}}]},
                      encoding_format={"type": "string", "enum": ["float", "base64"]})
EMBEDDINGS_OK = obj(("object", "data", "model", "usage"), data={"type": "array", "items": obj(
    ("object", "index", "embedding"), embedding={"oneOf": [{"type": "array", "items": {"type": "number"}},
                                                           {"type": "string"}]})},
    usage=obj(("prompt_tokens", "total_tokens")))
IMAGES_OK = obj(("created", "data"), created={"type": "integer"}, data={"type": "array", "items": obj(
    ("b64_json",), b64_json={"type": "string"})})


def build_spec() -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the routes ``exo_rk.gateway.create_app`` registers."""
    chat = openai_chat.operation("chat completion; SSE ending in 'data: [DONE]' when stream is true")
    paths: Dict[str, Dict[str, Any]] = {
        "/v1/chat/completions": {"post": chat},
        "/chat/completions": {"post": {**chat, "summary": "alias of /v1/chat/completions"}},
        "/v1/completions": {"post": op("text completion (OpenAI legacy), the prompt untemplated; SSE ending in "
                                       "'data: [DONE]' when stream is true",
                                       {JSON: obj(("id", "object", "choices")), "text/event-stream": {}},
                                       openai_chat.COMPLETIONS_SCHEMA, error=OPENAI_ERROR)},
        "/v1/models": {"get": op("the bridges' models", {JSON: obj(("object", "data"), data={
            "type": "array", "items": obj(("id",))})}, error=OPENAI_ERROR)},
        "/v1/embeddings": {"post": op(
            "OpenAI embeddings from a bridge serving the model: its last hidden layer, mean-pooled per input; "
            "501 when the server cannot embed", {JSON: EMBEDDINGS_OK}, EMBEDDINGS_BODY, error=OPENAI_ERROR)},
        "/v1/images/generations": {"post": op(
            "OpenAI images through the engine's image path (the bridges' mounted image routes)", {JSON: IMAGES_OK},
            IMAGE_BODY, error=OPENAI_ERROR)},
        "/health": {"get": op("liveness (open without the token)", {JSON: obj(("status",), status={
            "type": "string"})}, error=OPENAI_ERROR)},
        "/health/ready": {"get": op("readiness (open without the token): 200 once a bridge answers, 503 while "
                                    "none does yet (loading) or while stopping", {JSON: obj(("status",), status={
                                        "type": "string", "enum": ["ready", "loading", "stopping"]})},
                                    error=OPENAI_ERROR)},
        "/metrics": {"get": op("Prometheus text of the bridge pool", {"text/plain": {"type": "string"}},
                               error=OPENAI_ERROR)},
        "/openapi.json": {"get": op("this document", {JSON: {"type": "object"}}, error=OPENAI_ERROR)},
    }
    return document("exo-rk gateway", __version__,
                    auth_description("OpenAI-compatible chat over RKLLM bridges.",
                                     "\"code\", \"message\", \"type\", \"param\""), paths, OPENAI_ERROR)


async def handle_openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(build_spec())
