"""The OpenAPI 3 document of ``image-engine serve``, served at ``GET /openapi.json``.

Every route of the app is listed (a test keeps the two in step); numeric fields take their ranges from the
validators' table (:mod:`image_engine.gen_request`). With a token set (``--token`` or
``IMAGE_ENGINE_TOKEN``) every route but ``/health`` needs ``Authorization: Bearer <token>``, this
document included.
"""

from __future__ import annotations

from typing import Any, Dict

from flask import Blueprint, jsonify

from rk_common.openapi import ANY_OBJECT, JSON, auth_description, document, obj, op

from . import __version__
from .gen_request import GUIDANCE, MAGNITUDE, MAX_PROMPT_CHARS, QUALITY, SEED, STEPS, STRENGTH

IMAGE = {"type": "string", "format": "binary"}
SIZE = {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$", "example": "512x512"}
PROMPT = {"type": "string", "maxLength": MAX_PROMPT_CHARS}
FORMAT = {"type": "string", "enum": ["png", "jpeg", "webp"]}


def _generate_body() -> Dict[str, Any]:
    return obj(("prompt",), False, prompt=PROMPT, size=SIZE, num_inference_steps=STEPS.schema(),
               guidance_scale=GUIDANCE.schema(), seed=SEED.schema(), mode={"type": "string"},
               superres={"type": "boolean"}, superres_magnitude=MAGNITUDE.schema(), superres_format=FORMAT,
               superres_quality=QUALITY.schema(),
               response_format={"type": "string", "enum": ["b64_json", "image", "png"]},
               return_base64={"type": "boolean"}, negative_prompt={"type": "string"})


def _inference_body() -> Dict[str, Any]:
    return obj(("prompt",), False, prompt=PROMPT, uid={"type": "string", "minLength": 1, "maxLength": 128},
               steps=STEPS.schema(), seed=SEED.schema(), strength=STRENGTH.schema(), do_scale={"type": "boolean"},
               scale=GUIDANCE.schema(), size=SIZE, mode={"type": "string"})


def _openai_body() -> Dict[str, Any]:
    return obj(("prompt",), False, prompt=PROMPT, model={"type": "string"}, n={"type": "integer", "enum": [1]},
               size=SIZE, seed=SEED.schema(), response_format={"type": "string", "enum": ["b64_json", "url"]},
               num_inference_steps=STEPS.schema(), guidance_scale=GUIDANCE.schema())


def _paths() -> Dict[str, Dict[str, Any]]:
    sr_form = obj(("file",), file=IMAGE, magnitude=MAGNITUDE.schema(), out_format=FORMAT,
                  quality=QUALITY.schema())
    images = {"image/png": IMAGE, "image/jpeg": IMAGE, "image/webp": IMAGE}
    generate_json = obj(("image", "seed", "mode"), True, image={"type": "string"}, seed={"type": "integer"},
                        mode={"type": "string"}, content_type={"type": "string"})
    return {
        "/superres": {"post": op("upscale an image x3 per pass (multipart field 'file', or the raw body)", images,
                                 content={"multipart/form-data": {"schema": sr_form},
                                          "application/octet-stream": {"schema": IMAGE}})},
        "/api/superres/status": {"get": op("super-resolution queue and model", {JSON: ANY_OBJECT})},
        "/generate": {"post": op("text to image; image bytes, or JSON with b64_json/return_base64/?format=json",
                                 {**images, JSON: generate_json}, _generate_body())},
        "/generate/stream": {"post": op("text to image as NDJSON: start, one line per step, then done/error",
                                        {"application/x-ndjson": {}}, _generate_body())},
        "/inference": {"post": op("the custom SD server's request (image saved under OUTPUTS_DIR)",
                                  {JSON: obj(("message", "uid", "image"), True, message={"type": "string"},
                                             uid={"type": "string"}, image={"type": "string"})},
                                  _inference_body())},
        "/v1/images/generations": {"post": op(
            "OpenAI images", {JSON: obj(("created", "data"), True, created={"type": "integer"},
                                        data={"type": "array", "items": ANY_OBJECT})}, _openai_body())},
        "/api/modes": {"get": op("the configured modes and the current one", {JSON: ANY_OBJECT})},
        "/api/modes/switch": {"post": op("switch the current mode", {JSON: ANY_OBJECT},
                                         obj(("mode",), False, mode={"type": "string"}))},
        "/api/modes/reload": {"post": op("re-read the modes file", {JSON: ANY_OBJECT})},
        "/api/models/status": {"get": op("loaded models", {JSON: ANY_OBJECT})},
        "/api/vram": {"get": op("memory held by loaded models", {JSON: ANY_OBJECT})},
        "/health": {"get": op("liveness and service stats (open without the token)",
                              {JSON: obj(("status",), True, status={"type": "string", "enum": ["ok"]})})},
        "/openapi.json": {"get": op("this document", {JSON: ANY_OBJECT})},
    }


def build_spec() -> Dict[str, Any]:
    """The OpenAPI 3.0 document of the routes ``create_app`` registers."""
    return document("image-engine", __version__, auth_description("Super-resolution and LCM text-to-image."),
                    _paths())


def create_openapi_blueprint() -> Blueprint:
    """``GET /openapi.json``."""
    bp = Blueprint("openapi", __name__)

    @bp.get("/openapi.json")
    def openapi_json():
        return jsonify(build_spec())

    return bp
