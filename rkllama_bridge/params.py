"""Validation of request fields shared by every route family: a bad value is a 400 that names the field."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from rk_common.chat_images import IMAGE_MARK, decode_base64
from rk_common.errors import BadRequest
from rk_common.openai_chat import parse_messages
from rk_common.validation import Number, optional_bool, optional_str, require_object

from .runtimes.base import GenerationParams

__all__ = ["generation_params", "require_object", "optional_str", "optional_bool", "messages_field"]

MAX_TEMPERATURE = 10.0
MAX_TOP_K = 10_000


# The sampling fields every route family takes (request value, else the Modelfile's KEY, else the runtime
# default) and the ranges the runtimes accept; the OpenAPI document is built from the same table.
SAMPLING: Dict[str, Number] = {
    "temperature": Number(0, MAX_TEMPERATURE),
    "top_k": Number(0, MAX_TOP_K, integer=True),
    "top_p": Number(0, 1, lo_open=True),
    "repeat_penalty": Number(0, 10, lo_open=True),
    "frequency_penalty": Number(-2, 2),
    "presence_penalty": Number(-2, 2),
    "seed": Number(-(2**63), 2**63 - 1, integer=True),
}
NO_MODELFILE_DEFAULT = ("seed",)  # a fixed seed is a per-request choice


def generation_params(fields: Mapping[str, Any], defaults: Mapping[str, Any], num_ctx: int) -> GenerationParams:
    """Merge request ``fields`` (already mapped to our names; None = absent) over Modelfile ``defaults``."""
    base = GenerationParams()

    def pick(name: str):
        value = fields.get(name)
        if value is None and name not in NO_MODELFILE_DEFAULT:
            value = defaults.get(name.upper())
        return getattr(base, name) if value is None else value

    values = {name: None if (value := pick(name)) is None else spec.check(name, value)
              for name, spec in SAMPLING.items()}
    max_new = Number(1, num_ctx, integer=True).check("max_new_tokens", pick("max_new_tokens"))
    return GenerationParams(max_new_tokens=max_new, **values)


def messages_field(body: Mapping[str, Any], name: str = "messages") -> list:
    """An Ollama chat message list, checked as on the OpenAI route (roles, content, no lone surrogates);
    a message's ``images`` (base64) stand before its text, as Ollama puts them."""
    messages = parse_messages({"messages": body.get(name)})
    raw = body.get(name)
    out = []
    for i, message in enumerate(messages):
        images = ollama_images(raw[i].get("images"), f"{name}[{i}].images", name)
        if images:
            message = {**message, "content": IMAGE_MARK * len(images) + message["content"],
                       "images": images + list(message.get("images") or ())}
        out.append(message)
    return out


def ollama_images(value: Any, where: str, param: str) -> list:
    """Ollama's ``images``: a list of base64 strings (absent or null: none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"'{where}' must be a list of base64 strings", code="invalid_image", param=param)
    return [decode_base64(item, f"{where}[{j}]", param) for j, item in enumerate(value)]
