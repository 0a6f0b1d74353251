"""The OpenAPI 3 document of ``image-engine serve``, served at ``GET /openapi.json``.

Every route of the app is listed (a test keeps the two in step). With a token set (``--token`` or
``IMAGE_ENGINE_TOKEN``) every route but ``/health`` needs ``Authorization: Bearer <token>``, this
document included.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from flask import Blueprint, jsonify

from . import __version__

JSON = "application/json"
OPEN_ROUTES = {("get", "/health")}

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
IMAGE = {"type": "string", "format": "binary"}
ANY_OBJECT = {"type": "object"}
SIZE = {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$", "example": "512x512"}
PROMPT = {"type": "string", "maxLength": 4000}
SEED = {"type": "integer", "minimum": 0, "maximum": 2 ** 32 - 1}
STEPS = {"type": "integer", "minimum": 1, "maximum": 1000}
GUIDANCE = {"type": "number", "minimum": 0, "maximum": 30}


def _obj(required=(), extra: bool = False, **props) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = list(required)
    return out


def _op(summary: str, ok: Dict[str, Any], body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One operation: ``ok`` maps media types to the 200 schema; every error answers the ERROR shape."""
    op: Dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "success", "content": {mt: {"schema": s} for mt, s in ok.items()}},
        "default": {"description": "an error", "content": {JSON: {"schema": ERROR}}}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _generate_body() -> Dict[str, Any]:
    return _obj(("prompt",), prompt=PROMPT, size=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                seed=SEED, mode={"type": "string"}, superres={"type": "boolean"},
                superres_magnitude={"type": "integer", "minimum": 1, "maximum": 3},
                superres_format={"type": "string", "enum": ["png", "jpeg", "webp"]},
                superres_quality={"type": "integer", "minimum": 1, "maximum": 100},
                response_format={"type": "string", "enum": ["b64_json", "image", "png"]},
                return_base64={"type": "boolean"}, negative_prompt={"type": "string"})


def _paths() -> Dict[str, Dict[str, Any]]:
    sr_params = {"magnitude": {"type": "integer", "minimum": 1, "maximum": 3},
                 "out_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                 "quality": {"type": "integer", "minimum": 1, "maximum": 100}}
    sr_form = {"type": "object", "required": ["file"], "properties": {"file": IMAGE, **sr_params}}
    images = {"image/png": IMAGE, "image/jpeg": IMAGE, "image/webp": IMAGE}
    generate_json = _obj(("image", "seed", "mode"), True, image={"type": "string"}, seed={"type": "integer"},
                         mode={"type": "string"}, content_type={"type": "string"})
    return {
        "/superres": {"post": _op("upscale an image x3 per pass (multipart field 'file', or the raw body)",
                                  images, {"multipart/form-data": {"schema": sr_form},
                                           "application/octet-stream": {"schema": IMAGE}})},
        "/api/superres/status": {"get": _op("super-resolution queue and model", {JSON: ANY_OBJECT})},
        "/generate": {"post": _op("text to image; image bytes, or JSON with b64_json/return_base64/?format=json",
                                  {**images, JSON: generate_json}, {JSON: {"schema": _generate_body()}})},
        "/generate/stream": {"post": _op("text to image as NDJSON: start, one line per step, then done/error",
                                         {"application/x-ndjson": {}}, {JSON: {"schema": _generate_body()}})},
        "/inference": {"post": _op("the custom SD server's request (image saved under OUTPUTS_DIR)",
                                   {JSON: _obj(("message", "uid", "image"), True, message={"type": "string"},
                                               uid={"type": "string"}, image={"type": "string"})},
                                   {JSON: {"schema": _obj(
                                       ("prompt",), prompt=PROMPT, uid={"type": "string", "minLength": 1,
                                                                         "maxLength": 128},
                                       steps=STEPS, seed=SEED, strength={"type": "number", "minimum": 0,
                                                                         "maximum": 1},
                                       do_scale={"type": "boolean"}, scale=GUIDANCE, size=SIZE,
                                       mode={"type": "string"})}})},
        "/v1/images/generations": {"post": _op(
            "OpenAI images", {JSON: _obj(("created", "data"), True, created={"type": "integer"},
                                         data={"type": "array", "items": ANY_OBJECT})},
            {JSON: {"schema": _obj(("prompt",), prompt=PROMPT, model={"type": "string"},
                                   n={"type": "integer", "enum": [1]}, size=SIZE, seed=SEED,
                                   response_format={"type": "string", "enum": ["b64_json", "url"]},
                                   num_inference_steps=STEPS, guidance_scale=GUIDANCE)}})},
        "/api/modes": {"get": _op("the configured modes and the current one", {JSON: ANY_OBJECT})},
        "/api/modes/switch": {"post": _op("switch the current mode", {JSON: ANY_OBJECT},
                                          {JSON: {"schema": _obj(("mode",), mode={"type": "string"})}})},
        "/api/modes/reload": {"post": _op("re-read the modes file", {JSON: ANY_OBJECT})},
        "/api/models/status": {"get": _op("loaded models", {JSON: ANY_OBJECT})},
        "/api/vram": {"get": _op("memory held by loaded models", {JSON: ANY_OBJECT})},
        "/health": {"get": _op("liveness and service stats (open without the token)",
                               {JSON: _obj(("status",), True, status={"type": "string", "enum": ["ok"]})})},
        "/openapi.json": {"get": _op("this document", {JSON: ANY_OBJECT})},
    }


def build_spec() -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the routes ``create_app`` registers."""
    paths = _paths()
    for path, ops in paths.items():
        for method, op in ops.items():
            op["security"] = [] if (method, path) in OPEN_ROUTES else [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "image-engine", "version": __version__,
                 "description": "Super-resolution and LCM text-to-image. With a token set, every route except "
                                "GET /health (this document included) needs 'Authorization: Bearer <token>'; "
                                "errors are {\"error\": {\"code\", \"message\"}}."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": ERROR}},
        "paths": paths,
    }


def create_openapi_blueprint() -> Blueprint:
    """``GET /openapi.json``."""
    bp = Blueprint("openapi", __name__)

    @bp.get("/openapi.json")
    def openapi_json():
        return jsonify(build_spec())

    return bp
