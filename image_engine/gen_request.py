"""Validation of text-to-image request bodies (seed ``/generate`` JSON, ``/inference``, OpenAI images).

Every field is checked for type and range before anything is queued; a bad field raises
:class:`~image_engine.errors.BadInput` naming it. Fields left out stay ``None`` and are filled from the
mode's defaults later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import BadInput
from .modes import parse_size

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2 ** 32 - 1
MAX_GUIDANCE = 30.0
FORMATS = ("png", "jpeg", "webp")



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
        prompt=_prompt(body), size=size, steps=_int(body, "num_inference_steps", 1, 1000),
        guidance=_number(body, "guidance_scale", 0.0, MAX_GUIDANCE), seed=_int(body, "seed", 0, MAX_SEED),
        mode=_string(body, "mode"), superres=_bool(body, "superres"),
        superres_magnitude=_int(body, "superres_magnitude", 1, 3), superres_format=_format(body),
        superres_quality=_int(body, "superres_quality", 1, 100), as_json=wants_json)


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
    _number(body, "strength", 0.0, 1.0)
    do_scale = _bool(body, "do_scale")
    scale = _number(body, "scale", 0.0, MAX_GUIDANCE)
    guidance = None if do_scale is None and scale is None else (scale if do_scale is not False and scale
                                                                is not None else 1.0)
    req = GenerateRequest(prompt=_prompt(body), size=_size(body), steps=_int(body, "steps", 1, 1000),
                          guidance=guidance, seed=_int(body, "seed", 0, MAX_SEED), mode=_string(body, "mode"))
    return req, uid or ""


def parse_openai(body: Any) -> tuple[GenerateRequest, str]:
    """OpenAI ``/v1/images/generations``: prompt, model (a mode name), n (1), size, response_format, seed."""
    body = _require_object(body)
    known = {"prompt", "model", "n", "size", "response_format", "seed", "quality", "style", "user",
             "num_inference_steps", "guidance_scale"}
    unknown = set(body) - known
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)}; accepted: {sorted(known)}")
    n = _int(body, "n", 1, 1)
    del n  # one image per request: the queue, not the request, is where parallelism lives
    fmt = body.get("response_format", "b64_json")
    if fmt not in ("b64_json", "url"):
        raise BadInput(f"response_format must be 'b64_json' or 'url', got {fmt!r}")
    req = GenerateRequest(prompt=_prompt(body), size=_size(body), steps=_int(body, "num_inference_steps", 1, 1000),
                          guidance=_number(body, "guidance_scale", 0.0, MAX_GUIDANCE),
                          seed=_int(body, "seed", 0, MAX_SEED), mode=_string(body, "model"), as_json=True)
    return req, fmt


def _require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    return body


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadInput("prompt is required and must be a string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadInput(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape: no tokenizer can take it
        raise BadInput("prompt is not valid Unicode (it holds a lone surrogate)") from None
    return prompt


def _size(body: dict) -> tuple[int, int] | None:
    if "width" in body or "height" in body:
        if "size" in body:
            raise BadInput("give either size or width/height, not both")
        w, h = _int(body, "width", 1, 16384), _int(body, "height", 1, 16384)
        if w is None or h is None:
            raise BadInput("width and height must be given together")
        return w, h
    if body.get("size") is None:
        return None
    try:
        return parse_size(body["size"])
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _int(body: dict, key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not value.is_integer()):
        raise BadInput(f"{key} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BadInput(f"{key} must be between {lo} and {hi}, got {value}")
    return int(value)


def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and math.isnan(value)):
        raise BadInput(f"{key} must be a number, got {value!r:.40}")
    if not lo <= value <= hi:
        raise BadInput(f"{key} must be between {lo:g} and {hi:g}, got {value}")
    return float(value)


def _bool(body: dict, key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadInput(f"{key} must be true or false, got {value!r}")
    return value


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
