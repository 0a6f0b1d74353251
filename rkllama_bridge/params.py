"""Validation of request fields shared by every route family: a bad value is a 400 that names the field."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from .errors import BadRequest
from .runtimes.base import GenerationParams

MAX_TEMPERATURE = 10.0
MAX_TOP_K = 10_000


def _number(name: str, value: Any, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and isinstance(value, float) and not value.is_integer()):  # float(10**400) would overflow
        raise BadRequest(f"'{name}' must be {kind}, got {type(value).__name__} {str(value)[:40]!r}",
                         code="invalid_parameter")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"'{name}' must be finite", code="invalid_parameter")
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise BadRequest(f"'{name}' must be in {bracket}{lo}, {hi}], got {value}", code="invalid_parameter")
    return int(value) if integer else float(value)


def generation_params(fields: Mapping[str, Any], defaults: Mapping[str, Any], num_ctx: int) -> GenerationParams:
    """Merge request ``fields`` (already mapped to our names; None = absent) over Modelfile ``defaults``."""

    def pick(name: str, fallback):
        value = fields.get(name)
        return fallback if value is None else value

    base = GenerationParams()
    max_new = pick("max_new_tokens", defaults.get("MAX_NEW_TOKENS", base.max_new_tokens))
    seed = fields.get("seed")
    return GenerationParams(
        max_new_tokens=_number("max_new_tokens", max_new, 1, num_ctx, integer=True),
        temperature=_number("temperature", pick("temperature", defaults.get("TEMPERATURE", base.temperature)),
                            0, MAX_TEMPERATURE),
        top_k=_number("top_k", pick("top_k", defaults.get("TOP_K", base.top_k)), 0, MAX_TOP_K, integer=True),
        top_p=_number("top_p", pick("top_p", defaults.get("TOP_P", base.top_p)), 0, 1, lo_open=True),
        repeat_penalty=_number("repeat_penalty", pick("repeat_penalty", defaults.get("REPEAT_PENALTY",
                                                                                      base.repeat_penalty)),
                               0, 10, lo_open=True),
        frequency_penalty=_number("frequency_penalty", pick("frequency_penalty", defaults.get(
            "FREQUENCY_PENALTY", 0.0)), -2, 2),
        presence_penalty=_number("presence_penalty", pick("presence_penalty", defaults.get(
            "PRESENCE_PENALTY", 0.0)), -2, 2),
        seed=None if seed is None else _number("seed", seed, -(2**63), 2**63 - 1, integer=True),
    )


def require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_body")
    return body


def optional_str(body: Mapping[str, Any], name: str) -> Optional[str]:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string", code="invalid_parameter")
    return value


def optional_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", code="invalid_parameter")
    return value


def messages_field(body: Mapping[str, Any], name: str = "messages") -> list:
    """A chat message list: [{"role": str, "content": str | list of text parts}, ...]."""
    messages = body.get(name)
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"'{name}' must be a non-empty list of {{role, content}} objects", code="invalid_messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"{name}[{i}] must be an object with a string 'role'", code="invalid_messages")
        content = m.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(p, str) for p in parts):
                raise BadRequest(f"{name}[{i}].content: a text part's 'text' must be a string",
                                 code="invalid_messages")
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadRequest(f"{name}[{i}].content must be a string", code="invalid_messages")
        out.append({**m, "content": content})
    return out
