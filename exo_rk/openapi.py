"""The OpenAPI 3 document of the ``exo-rk serve`` gateway, served at ``GET /openapi.json``.

Every route of the app is listed (a test keeps the two in step). With ``--api-token`` (or
``EXO_RK_API_TOKEN``) every route but ``/health`` needs ``Authorization: Bearer <token>``, this document
included.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from aiohttp import web

from exo_rk import __version__
from exo_rk.model_cards import IMAGE_MODEL_IDS
from rkllama_bridge.openapi import document

JSON = "application/json"
OPEN_ROUTES = {("get", "/health")}

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}}}}}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant", "developer"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}]}}}
CHAT_BODY = {"type": "object", "required": ["messages"], "properties": {
    "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "stream": {"type": "boolean"}, "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "top_p": {"type": "number", "minimum": 0,
                                                                          "maximum": 1},
    "seed": {"type": "integer"}, "stop": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": 4,
                                                                            "items": {"type": "string"}}]},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}}}
IMAGE_BODY = {"type": "object", "required": ["prompt"], "properties": {
    "prompt": {"type": "string", "minLength": 1}, "model": {"type": "string", "enum": sorted(IMAGE_MODEL_IDS)},
    "n": {"type": "integer", "enum": [1]}, "response_format": {"type": "string", "enum": ["b64_json"]},
    "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"}, "num_inference_steps": {"type": "integer"},
    "guidance_scale": {"type": "number"}, "seed": {"type": "integer"}, "mode": {"type": "string"}}}
CHAT_OK = {"type": "object", "required": ["id", "object", "choices", "usage"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string", "enum": ["chat.completion"]},
    "model": {"type": "string"}, "choices": {"type": "array", "items": {"type": "object"}},
    "usage": {"type": "object"}}}


def _op(summary: str, ok: Dict[str, Any], body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One operation: ``ok`` maps media types to the 200 schema; every error answers the ERROR shape."""
    op: Dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "success", "content": {mt: {"schema": s} for mt, s in ok.items()}},
        "default": {"description": "an error", "content": {JSON: {"schema": ERROR}}}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return op


def build_spec() -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the routes ``exo_rk.gateway.create_app`` registers."""
    chat = _op("chat completion; SSE ending in 'data: [DONE]' when stream is true",
               {JSON: CHAT_OK, "text/event-stream": {}}, CHAT_BODY)
    paths: Dict[str, Dict[str, Any]] = {
        "/v1/chat/completions": {"post": chat},
        "/chat/completions": {"post": {**chat, "summary": "alias of /v1/chat/completions"}},
        "/v1/models": {"get": _op("the bridges' models", {JSON: {
            "type": "object", "required": ["object", "data"],
            "properties": {"data": {"type": "array", "items": {"type": "object", "required": ["id"]}}}}})},
        "/v1/images/generations": {"post": _op(
            "OpenAI images through the engine's image path (the bridges' mounted image routes)", {JSON: {
                "type": "object", "required": ["created", "data"], "properties": {
                    "created": {"type": "integer"}, "data": {"type": "array", "items": {
                        "type": "object", "required": ["b64_json"], "properties": {"b64_json": {"type": "string"}}}}}}},
            IMAGE_BODY)},
        "/health": {"get": _op("liveness (open without the token)", {JSON: {
            "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}})},
        "/metrics": {"get": _op("Prometheus text of the bridge pool", {"text/plain": {"type": "string"}})},
        "/openapi.json": {"get": _op("this document", {JSON: {"type": "object"}})},
    }
    return document("exo-rk gateway", __version__,
                    "OpenAI-compatible chat over RKLLM bridges. With --api-token, every route except GET /health "
                    "(this document included) needs 'Authorization: Bearer <token>'; errors are "
                    "{\"error\": {\"code\", \"message\", \"type\"}}.", paths, ERROR, OPEN_ROUTES)


async def handle_openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(build_spec())
