"""The OpenAI chat protocol, once for every server that speaks it (the bridge's ``/v1/chat/completions``
and the gateway's): the request's fields and their ranges, the reply (whole or as SSE chunks), finish
reasons and usage. Where the servers once disagreed this follows OpenAI's documented behaviour: at most
4 stop strings, ``temperature`` in [0, 2], ``system_fingerprint`` and ``logprobs: null`` on every reply,
a reply cut short by a deadline finishes with ``length`` (incomplete), never ``stop`` (natural end).

Nothing here touches HTTP: a server parses the body with :func:`parse_chat_request`, feeds the text it
generates to a :class:`ChatReply` and writes what comes out."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import openapi
from .chat_images import IMAGE_MARK, content_parts
from .errors import BadRequest
from .reply_shaping import REASONING, ReplyStream, shape_reply
from .tool_calls import validate_tools
from .validation import Number, optional_bool, optional_number, require_object, stop_list, unicode_text

MAX_STOP = 4  # OpenAI: "Up to 4 sequences where the API will stop generating further tokens"
ROLES = ("system", "user", "assistant", "tool", "developer")
SYSTEM_FINGERPRINT = "exo-rk"
SSE_DONE = b"data: [DONE]\n\n"

# The request's numeric fields with OpenAI's documented ranges; the OpenAPI documents are built from it.
NUMBERS: Dict[str, Number] = {
    "max_tokens": Number(1, 2**31 - 1, integer=True),
    "max_completion_tokens": Number(1, 2**31 - 1, integer=True),
    "temperature": Number(0, 2),
    "top_p": Number(0, 1, lo_open=True),
    "frequency_penalty": Number(-2, 2),
    "presence_penalty": Number(-2, 2),
    "seed": Number(-(2**63), 2**63 - 1, integer=True),
    "n": Number(1, 1, integer=True),
}

# How a generation ended (the runtimes' and the bridge stream's words) -> OpenAI's finish_reason.
# "timeout", "shutdown" (cut by a server stopping) and "length" all mean the reply is incomplete; "abort" is a
# stop the server chose.
FINISH_REASONS = {"stop": "stop", "length": "length", "timeout": "length", "shutdown": "length", "abort": "stop",
                  "cancelled": "stop", "error": "error", "tool_calls": "tool_calls"}


def finish_reason(ended: Optional[str]) -> str:
    return FINISH_REASONS.get(ended or "stop", "stop")


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body; None means "the model's default"."""

    model: Optional[str]
    messages: Tuple[Dict[str, Any], ...]
    stream: bool = False
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    stop: Tuple[str, ...] = ()
    include_usage: bool = False
    tools: Tuple[Dict[str, Any], ...] = ()  # the tools to show the model (after tool_choice)


def _invalid_message(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_messages", param="messages")


def _content(message: dict, index: int) -> Tuple[str, List[bytes]]:
    """The message's text and the bytes of its images (``image_url`` data URLs, each marked in the text)."""
    content = message.get("content")
    images: List[bytes] = []
    if content is None:  # an assistant turn that only called tools
        return "", images
    if isinstance(content, list):  # content parts: text, and images as inline data URLs
        content, images = content_parts(content, f"messages[{index}]")
    elif isinstance(content, str):
        content = content.replace(IMAGE_MARK, "")
    else:
        raise _invalid_message(f"messages[{index}].content must be a string or a list of content parts")
    try:
        return unicode_text(f"messages[{index}].content", content), images
    except BadRequest as exc:
        raise _invalid_message(exc.message) from None


def parse_messages(body: Mapping[str, Any]) -> Tuple[Dict[str, Any], ...]:
    """OpenAI messages; ``developer`` is a system turn for chat templates. A message with ``image_url``
    parts gets ``images`` (their bytes) and an image mark in its text per image (see ``chat_images``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid_message("'messages' must be a non-empty list of {role, content} objects")
    out: List[Dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _invalid_message(f"messages[{i}] needs a role of {', '.join(ROLES)}")
        role = "system" if message["role"] == "developer" else message["role"]
        text, images = _content(message, i)
        parsed = {k: v for k, v in message.items() if k != "images"}
        parsed.update(role=role, content=text)
        if images:
            parsed["images"] = images
        out.append(parsed)
    return tuple(out)


def parse_chat_request(body: Any) -> ChatRequest:
    """Check the body field by field; a bad field is a 400 naming it (``param`` says which)."""
    body = require_object(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", code="invalid_parameter", param="model")
    numbers = {name: optional_number(body, name, spec) for name, spec in NUMBERS.items()}
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", code="invalid_parameter", param="stream_options")
    max_tokens = numbers["max_completion_tokens"] or numbers["max_tokens"]
    return ChatRequest(
        model=model or None, messages=parse_messages(body), stream=bool(optional_bool(body, "stream", False)),
        max_tokens=max_tokens, temperature=numbers["temperature"], top_p=numbers["top_p"], seed=numbers["seed"],
        frequency_penalty=numbers["frequency_penalty"], presence_penalty=numbers["presence_penalty"],
        stop=tuple(stop_list(body.get("stop"), MAX_STOP)),
        include_usage=bool((options or {}).get("include_usage")),
        tools=tuple(validate_tools(body.get("tools"), body.get("tool_choice"))))


def parse_completion_request(body: Any) -> Tuple[str, ChatRequest]:
    """A ``/v1/completions`` body: (the prompt, the other fields checked as a chat request's)."""
    body = require_object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string (or a list of one)", code="invalid_prompt",
                         param="prompt")
    rest = {k: v for k, v in body.items() if k not in ("prompt", "tools", "tool_choice")}
    return prompt, parse_chat_request({**rest, "messages": [{"role": "user", "content": prompt}]})


class TextCompletionReply:
    """The answer of ``/v1/completions`` (``object: text_completion``), whole or as chunks."""

    def __init__(self, model: str, completion_id: Optional[str] = None):
        self.model = model
        self.id = completion_id or f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _envelope(self, choices: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def completion(self, text: str, ended: Optional[str], usage: Mapping[str, Any]) -> Dict[str, Any]:
        return {**self._envelope([{"index": 0, "text": text, "logprobs": None,
                                   "finish_reason": finish_reason(ended)}]), "usage": openai_usage(usage)}

    def chunk(self, text: str) -> Dict[str, Any]:
        return self._envelope([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def finish(self, ended: Optional[str], usage: Mapping[str, Any], include_usage: bool,
               error: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = [{"error": dict(error)}] if error is not None else []
        out.append(self._envelope([{"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason(ended)}]))
        if include_usage:
            out.append({**self._envelope([]), "usage": openai_usage(usage)})
        return out


COMPLETIONS_SCHEMA = openapi.obj(("prompt",), model={"type": "string"}, prompt={"anyOf": [
    {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]},
    stream={"type": "boolean"}, stop={"anyOf": [{"type": "string", "minLength": 1}, {
        "type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP}]},
    stream_options=openapi.obj(include_usage={"type": "boolean"}))


SPEED_FIELDS = ("tokens_per_second", "prompt_eval_duration", "eval_duration", "total_duration")


def openai_usage(usage: Mapping[str, Any]) -> Dict[str, Any]:
    """OpenAI's usage object; cached prompt tokens (prefix reuse) go to ``prompt_tokens_details``."""
    out: Dict[str, Any] = {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if usage.get("cached_tokens"):
        out["prompt_tokens_details"] = {"cached_tokens": int(usage["cached_tokens"])}
    for key in SPEED_FIELDS:  # rkllama's own usage fields, which its clients print
        if key in usage:
            out[key] = float(usage[key])
    return out


class ChatReply:
    """One completion's answer. Whole: :meth:`completion`. Streamed: :meth:`first_chunk`, :meth:`push` per
    text piece, :meth:`finish` at the end; each gives chunk objects to send as SSE (:func:`sse`)."""

    def __init__(self, model: str, *, tools: bool = False, opened: bool = False, include_usage: bool = False,
                 completion_id: Optional[str] = None):
        self.model = model
        self.id = completion_id or f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.tools = tools
        self.include_usage = include_usage
        self._stream = ReplyStream(opened, tools)
        self._opened = opened

    def _envelope(self, kind: str) -> Dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def completion(self, text: str, ended: Optional[str], usage: Mapping[str, Any]) -> Dict[str, Any]:
        """The non-streamed body for the whole reply ``text``."""
        reply = shape_reply(text, self._opened, self.tools)
        message: Dict[str, Any] = {"role": "assistant",
                                   "content": reply.content if reply.content or not reply.tool_calls else None}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        finish = "tool_calls" if reply.tool_calls else finish_reason(ended)
        return {**self._envelope("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": openai_usage(usage)}

    def chunk(self, delta: Dict[str, Any], finish: Optional[str] = None) -> Dict[str, Any]:
        return {**self._envelope("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def first_chunk(self) -> Dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def push(self, text: str) -> List[Dict[str, Any]]:
        return self._deltas(self._stream.push(text)) if text else []

    def finish(self, ended: Optional[str], usage: Mapping[str, Any],
               error: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
        """The last chunks: held-back text, tool calls, the failure (if ``error``), the finish reason and,
        when asked for, the usage chunk."""
        parts, calls = self._stream.finish()
        out = self._deltas(parts)
        if calls:
            out.append(self.chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
        if error is not None:
            out.append({"error": dict(error)})
        out.append(self.chunk({}, "tool_calls" if calls else finish_reason(ended)))
        if self.include_usage:
            out.append({**self._envelope("chat.completion.chunk"), "choices": [], "usage": openai_usage(usage)})
        return out

    def _deltas(self, parts: Sequence[Tuple[str, str]]) -> List[Dict[str, Any]]:
        return [self.chunk({"reasoning_content": text} if kind == REASONING else {"content": text})
                for kind, text in parts]


def sse(item: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``item`` as JSON."""
    return f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode("utf-8")


# --- the OpenAPI schema of the request, from the tables above ---------------------------------------------

TEXT_PART = openapi.obj(("type", "text"), type={"type": "string", "enum": ["text"]}, text={"type": "string"})
IMAGE_PART = openapi.obj(("type", "image_url"), type={"type": "string", "enum": ["image_url"]},
                         image_url=openapi.obj(("url",), url={"type": "string", "pattern": "^data:"}))
MESSAGE = openapi.obj(("role",), role={"type": "string", "enum": list(ROLES)}, content={"anyOf": [
    {"type": "string", "nullable": True}, {"type": "array", "items": {"anyOf": [TEXT_PART, IMAGE_PART]}}]})
STOP = {"anyOf": [{"type": "string", "minLength": 1},
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP}]}


def request_schema(**extra: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON schema of a chat completion body; ``extra`` adds a server's own fields."""
    fields = {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
              "stream": {"type": "boolean"}, "stop": STOP,
              "stream_options": openapi.obj(include_usage={"type": "boolean"}),
              "tools": {"type": "array", "items": {"type": "object"}},
              **{name: spec.schema() for name, spec in NUMBERS.items()}}
    return openapi.obj(("messages",), **{**fields, **extra})


COMPLETION_SCHEMA = openapi.obj(
    ("id", "object", "created", "model", "choices", "usage"), id={"type": "string"},
    object={"type": "string", "enum": ["chat.completion"]}, created={"type": "integer"},
    model={"type": "string"}, system_fingerprint={"type": "string"},
    choices={"type": "array", "items": openapi.obj(("index", "message", "finish_reason"))},
    usage=openapi.obj(("prompt_tokens", "completion_tokens", "total_tokens")))


def operation(summary: str, **extra_fields: Dict[str, Any]) -> Dict[str, Any]:
    """The OpenAPI operation of ``POST /v1/chat/completions`` (JSON, or SSE when streamed)."""
    return openapi.op(summary, {openapi.JSON: COMPLETION_SCHEMA, openapi.SSE: {}},
                      request_schema(**extra_fields), error=openapi.OPENAI_ERROR)
