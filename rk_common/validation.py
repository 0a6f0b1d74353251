"""Field validation shared by every server: each check names the field and the accepted range in a 400.

``error`` lets a server raise its own subclass of :class:`~rk_common.errors.ApiError` (the image engine's
``BadInput``) so its error codes stay what its clients know."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Type

from .errors import ApiError, BadRequest

INVALID = "invalid_parameter"


def _fail(error: Type[ApiError], message: str, name: str) -> ApiError:
    if error is BadRequest:
        return BadRequest(message, code=INVALID, param=name)
    return error(message)


@dataclass(frozen=True)
class Number:
    """A numeric field: ``integer`` or any finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False

    def check(self, name: str, value: Any, error: Type[ApiError] = BadRequest):
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.integer and isinstance(value, float) and not value.is_integer()):
            raise _fail(error, f"'{name}' must be {kind}, got {type(value).__name__} {str(value)[:40]!r}", name)
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(error, f"'{name}' must be finite", name)
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            bracket = "(" if self.lo_open else "["
            raise _fail(error, f"'{name}' must be in {bracket}{self.lo}, {self.hi}], got {value}", name)
        return int(value) if self.integer else float(value)

    def schema(self) -> dict:
        """The OpenAPI 3.0 schema of the values :meth:`check` accepts."""
        out: dict = {"type": "integer" if self.integer else "number", "minimum": self.lo, "maximum": self.hi}
        if self.lo_open:
            out["exclusiveMinimum"] = True
        return out


def optional_number(body: Mapping[str, Any], name: str, spec: Number, error: Type[ApiError] = BadRequest):
    """``body[name]`` checked against ``spec``; None when absent or null."""
    value = body.get(name)
    return None if value is None else spec.check(name, value, error)


def require_object(body: Any, error: Type[ApiError] = BadRequest) -> dict:
    if not isinstance(body, dict):
        raise (BadRequest("the request body must be a JSON object", code="invalid_body")
               if error is BadRequest else error("the request body must be a JSON object"))
    return body


def optional_str(body: Mapping[str, Any], name: str, error: Type[ApiError] = BadRequest) -> Optional[str]:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _fail(error, f"'{name}' must be a string", name)
    return value


def optional_bool(body: Mapping[str, Any], name: str, default: Optional[bool],
                  error: Type[ApiError] = BadRequest) -> Optional[bool]:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(error, f"'{name}' must be true or false", name)
    return value


def unicode_text(name: str, text: str, error: Type[ApiError] = BadRequest) -> str:
    """``text`` unless it holds a lone surrogate (a JSON ``\\udXXX`` escape) that no tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(error, f"{name} is not valid Unicode (it holds a lone surrogate)", name) from None
    return text


def stop_list(value: Any, limit: int) -> Sequence[str]:
    """Stop strings: a non-empty string or a list of up to ``limit`` of them."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > limit:
        raise BadRequest(f"'stop' must be a non-empty string or a list of up to {limit} of them",
                         code=INVALID, param="stop")
    return list(value)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json(raw: bytes, error: Type[ApiError] = BadRequest) -> Any:
    """The JSON value of a request body. Empty or malformed bodies, and ``\\udXXX`` escapes that leave a
    lone surrogate (no tokenizer takes one), are a 400 that says so."""
    if not raw:
        message = "the request body is empty: send a JSON object"
        raise BadRequest(message, code="invalid_body") if error is BadRequest else error(message)
    try:
        body = json.loads(raw)
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError) as exc:
        message = f"malformed JSON: {exc}"
        raise BadRequest(message, code="invalid_json") if error is BadRequest else error(message) from None
    return body
