"""Validation of text-to-image request bodies (seed ``/generate`` JSON, ``/inference``, OpenAI images).

Every field is checked for type and range before anything is queued; a bad field raises
:class:`~image_engine.errors.BadInput` naming it. Fields left out stay ``None`` and are filled from the
mode's defaults later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rk_common.validation import Number, optional_bool, optional_number, require_object, unicode_text

from .errors import BadInput
from .modes import parse_size

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2 ** 32 - 1
MAX_GUIDANCE = 30.0
FORMATS = ("png", "jpeg", "webp")
# The numeric fields' ranges; the OpenAPI document (image_engine.openapi) is built from the same table.
STEPS = Number(1, 1000, integer=True)
SEED = Number(0, MAX_SEED, integer=True)
GUIDANCE = Number(0.0, MAX_GUIDANCE)
MAGNITUDE = Number(1, 3, integer=True)
QUALITY = Number(1, 100, integer=True)
STRENGTH = Number(0.0, 1.0)
SIDE = Number(1, 16384, integer=True)


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request; ``None`` means "use the mode's default" (or a random seed)."""

    prompt: str
    size: tuple[int, int] | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    mode: str | None = None
    superres: bool | None = None
    superres_magnitude: int | None = None
    superres_format: str | None = None
    superres_quality: int | None = None
    as_json: bool = False


def parse_generate(body: Any, *, as_json: bool = False) -> GenerateRequest:
    """The seed ``/generate`` body: prompt, size, num_inference_steps, guidance_scale, seed, superres*, mode."""
    body = _require_object(body)
    known = {"prompt", "size", "num_inference_steps", "guidance_scale", "seed", "mode", "superres",
             "superres_magnitude", "superres_format", "superres_quality", "response_format", "return_base64",
             "negative_prompt", "width", "height"}
    unknown = set(body) - known
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)}; accepted: {sorted(known)}")
    size = _size(body)
    fmt = body.get("response_format")
    if fmt is not None and fmt not in ("b64_json", "image", "png"):
        raise BadInput(f"response_format must be 'b64_json' or 'image', got {fmt!r}")
    wants_json = as_json or fmt == "b64_json" or _bool(body, "return_base64") is True
    return GenerateRequest(
        prompt=_prompt(body), size=size, steps=_check(body, "num_inference_steps", STEPS),
        guidance=_check(body, "guidance_scale", GUIDANCE), seed=_check(body, "seed", SEED),
        mode=_string(body, "mode"), superres=_bool(body, "superres"),
        superres_magnitude=_check(body, "superres_magnitude", MAGNITUDE), superres_format=_format(body),
        superres_quality=_check(body, "superres_quality", QUALITY), as_json=wants_json)


def parse_inference(body: Any) -> tuple[GenerateRequest, str]:
    """The custom SD server's ``/inference`` body → (request, uid). ``strength`` is accepted and unused
    (it applies to image-to-image); ``do_scale`` false means no guidance (scale 1.0)."""
    body = _require_object(body)
    known = {"uid", "prompt", "steps", "seed", "strength", "do_scale", "scale", "size", "mode"}
    unknown = set(body) - known
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)}; accepted: {sorted(known)}")
    uid = body.get("uid")
    if uid is not None and (not isinstance(uid, str) or not 1 <= len(uid) <= 128):
        raise BadInput("uid must be a string of 1-128 characters")
    _check(body, "strength", STRENGTH)
    do_scale = _bool(body, "do_scale")
    scale = _check(body, "scale", GUIDANCE)
    guidance = None if do_scale is None and scale is None else (scale if do_scale is not False and scale
                                                                is not None else 1.0)
    req = GenerateRequest(prompt=_prompt(body), size=_size(body), steps=_check(body, "steps", STEPS),
                          guidance=guidance, seed=_check(body, "seed", SEED), mode=_string(body, "mode"))
    return req, uid or ""


def parse_openai(body: Any) -> tuple[GenerateRequest, str]:
    """OpenAI ``/v1/images/generations``: prompt, model (a mode name), n (1), size, response_format, seed."""
    body = _require_object(body)
    known = {"prompt", "model", "n", "size", "response_format", "seed", "quality", "style", "user",
             "num_inference_steps", "guidance_scale"}
    unknown = set(body) - known
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)}; accepted: {sorted(known)}")
    n = _check(body, "n", Number(1, 1, integer=True))
    del n  # one image per request: the queue, not the request, is where parallelism lives
    fmt = body.get("response_format", "b64_json")
    if fmt not in ("b64_json", "url"):
        raise BadInput(f"response_format must be 'b64_json' or 'url', got {fmt!r}")
    req = GenerateRequest(prompt=_prompt(body), size=_size(body), steps=_check(body, "num_inference_steps", STEPS),
                          guidance=_check(body, "guidance_scale", GUIDANCE),
                          seed=_check(body, "seed", SEED), mode=_string(body, "model"), as_json=True)
    return req, fmt


def _require_object(body: Any) -> dict:
    return require_object(body, BadInput)


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadInput("prompt is required and must be a string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadInput(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return unicode_text("prompt", prompt, BadInput)


def _size(body: dict) -> tuple[int, int] | None:
    if "width" in body or "height" in body:
        if "size" in body:
            raise BadInput("give either size or width/height, not both")
        w, h = _check(body, "width", SIDE), _check(body, "height", SIDE)
        if w is None or h is None:
            raise BadInput("width and height must be given together")
        return w, h
    if body.get("size") is None:
        return None
    try:
        return parse_size(body["size"])
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _check(body: dict, key: str, spec: Number):
    return optional_number(body, key, spec, BadInput)


def _bool(body: dict, key: str) -> bool | None:
    return optional_bool(body, key, None, BadInput)


def _string(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput(f"{key} must be a string, got {value!r}")
    return value


def _format(body: dict) -> str | None:
    value = body.get("superres_format")
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in FORMATS:
        raise BadInput(f"superres_format must be one of {list(FORMATS)}, got {value!r}")
    return value.lower()
