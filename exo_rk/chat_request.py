"""Validation of OpenAI ``/v1/chat/completions`` request bodies into a frozen ``ChatRequest``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


class InvalidRequest(ValueError):
    """The body is not a valid chat completion request; the message names the field."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class PromptTooLarge(InvalidRequest):
    """The conversation has more characters than the gateway templates and tokenizes."""

    status = 413
    code = "prompt_too_large"


class ContextLengthExceeded(InvalidRequest):
    """The prompt and the room asked for the reply do not fit the model's context (``NUM_CTX``)."""

    code = "context_length_exceeded"


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Tuple[Dict[str, Any], ...]
    stream: bool = False
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()
    include_usage: bool = False


def _number(body: dict, name: str, lo: float, hi: float) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InvalidRequest(f"'{name}' must be a number between {lo} and {hi}", name)
    return float(value)


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text reaches a text model
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise InvalidRequest(f"messages[{index}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"messages[{index}].content must be a string or a list of text parts", "messages")


def _messages(body: dict) -> Tuple[Dict[str, Any], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", "messages")
    out: List[Dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "developer",
        ):
            raise InvalidRequest(
                f"messages[{i}] needs a role of system, user, assistant or developer", "messages"
            )
        role = "system" if message["role"] == "developer" else message["role"]
        content = _content(message, i)
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape: no tokenizer can take it
            raise InvalidRequest(f"messages[{i}].content is not valid Unicode (lone surrogate)", "messages") from None
        out.append({"role": role, "content": content})
    return tuple(out)


def _stop(body: dict) -> Tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stop)


def parse_chat_request(body: Any, default_model: str) -> ChatRequest:
    """Check ``body`` field by field; raises ``InvalidRequest`` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    model = body.get("model") or default_model
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false", "stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidRequest("'max_tokens' must be a positive integer", "max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequest("'seed' must be an integer", "seed")
    if body.get("n", 1) != 1:
        raise InvalidRequest("only n=1 is supported", "n")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", "stream_options")
    return ChatRequest(
        model=model,
        messages=_messages(body),
        stream=stream,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        seed=seed,
        stop=_stop(body),
        include_usage=bool(options.get("include_usage")),
    )


def check_prompt_chars(req: ChatRequest, tools: Optional[list], limit: int) -> None:
    """Refuse a conversation (messages and tool definitions) longer than ``limit`` characters: counted
    before anything is templated or tokenized, so an oversized prompt costs no CPU."""
    chars = sum(len(m["content"]) for m in req.messages)
    if tools:
        chars += sum(len(str(tool)) for tool in tools)
    if chars > limit:
        raise PromptTooLarge(f"the conversation has {chars:,} characters; this gateway takes at most {limit:,} "
                             f"(RKLLM_MAX_PROMPT_CHARS)", "messages")


def check_context(prompt_tokens: int, max_tokens: Optional[int], num_ctx: Optional[int], model: str) -> None:
    """The bridge's own context rule, applied before anything is sent: the prompt must leave room for at
    least one token, and an explicit ``max_tokens`` must fit what is left (without one the bridge
    shortens its default to fit)."""
    if not num_ctx:
        return
    room = num_ctx - prompt_tokens
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = f" + max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ContextLengthExceeded(f"the prompt of {prompt_tokens:,} tokens{asked} does not fit the context of "
                                    f"{num_ctx:,} tokens of model {model}; shorten the conversation"
                                    + (" or lower max_tokens" if max_tokens is not None else ""), "messages")
