"""The gateway's limits on a chat prompt, checked before anything is sent to a bridge: a character limit
before the prompt is templated or tokenized (so an oversized one costs no CPU), and the context budget
once its tokens are known (the bridge's own rule, so nothing that cannot fit reaches a board)."""

from __future__ import annotations

from typing import Optional

from rk_common.errors import ApiError
from rk_common.openai_chat import ChatRequest


class PromptTooLarge(ApiError):
    status = 413
    code = "prompt_too_large"


class ContextLengthExceeded(ApiError):
    status = 400
    code = "context_length_exceeded"


def check_prompt_chars(req: ChatRequest, limit: int) -> None:
    """Refuse a conversation (messages and tool definitions) longer than ``limit`` characters."""
    chars = sum(len(m["content"]) for m in req.messages if isinstance(m.get("content"), str))
    chars += sum(len(str(tool)) for tool in req.tools)
    if chars > limit:
        raise PromptTooLarge(f"the conversation has {chars:,} characters; this gateway takes at most {limit:,} "
                             f"(RKLLM_MAX_PROMPT_CHARS)", param="messages")


def check_context(prompt_tokens: int, max_tokens: Optional[int], num_ctx: Optional[int], model: str) -> None:
    """The prompt must leave room for at least one token, and an explicit ``max_tokens`` must fit what is
    left (without one the bridge shortens its default to fit)."""
    if not num_ctx:
        return
    room = num_ctx - prompt_tokens
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = f" + max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ContextLengthExceeded(f"the prompt of {prompt_tokens:,} tokens{asked} does not fit the context of "
                                    f"{num_ctx:,} tokens of model {model}; shorten the conversation"
                                    + (" or lower max_tokens" if max_tokens is not None else ""), param="messages")
