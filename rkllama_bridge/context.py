"""Context budget: what a client may ask the bridge to do when a conversation does not fit the model's
context (``NUM_CTX``) together with the room kept for the reply.

Policies (request field ``"truncate"``):

- ``"none"`` (the default): nothing is dropped; an overflow is a 400 ``context_length_exceeded`` whose
  message gives the prompt length, max_new_tokens and the context size.
- ``"left"``: the oldest non-system messages are dropped, one turn at a time, until the templated
  prompt plus the reply room fits. System messages and the last message are always kept, and the kept
  part never starts with an assistant or tool message. If even that does not fit, the request is a 400
  as above. The room kept for the reply is the request's max_new_tokens, else the Modelfile's
  ``MAX_NEW_TOKENS``. Responses tell how many messages were dropped (``truncated_messages``).

Nothing that overflows is ever passed to a runtime.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from .errors import BadRequest, ContextOverflow
from .runtimes.base import GenerationParams

TRUNCATE_POLICIES = ("none", "left")
_KEEP_ROLES = ("system", "developer")


def check_truncate(value: object) -> str:
    """The policy a request asks for (absent or null: "none")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "left"
    if not isinstance(value, str) or value not in TRUNCATE_POLICIES:
        raise BadRequest(f"'truncate' must be one of {', '.join(TRUNCATE_POLICIES)} (got {str(value)[:40]!r})",
                         code="invalid_parameter")
    return value


def reply_room(fields: dict, stored) -> int:
    """Tokens to keep free for the reply when truncating (see the module docstring)."""
    value = fields.get("max_new_tokens")
    if value is None:
        value = stored.modelfile.values.get("MAX_NEW_TOKENS", GenerationParams().max_new_tokens)
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1  # an invalid value is reported by the parameter validation that follows


def truncate_left(messages: List[dict], encode: Callable[[Sequence[dict]], Optional[List[int]]],
                  budget: int) -> Tuple[List[int], int]:
    """Drop the oldest non-system turns until ``encode(messages)`` is at most ``budget`` tokens
    (``encode`` may answer None for "too long to be worth tokenizing").
    Returns (ids, number of messages dropped); raises ContextOverflow when nothing more can go."""
    kept = list(messages)
    dropped = 0
    ids = encode(kept)
    while ids is None or len(ids) > budget:
        index = _oldest_droppable(kept)
        if index is None:
            size = "too many characters" if ids is None else f"{len(ids)} tokens"
            raise ContextOverflow(
                f"even after dropping {dropped} older message(s) the prompt is {size}, over the "
                f"{budget} tokens left by the context once the reply's room is kept; shorten the last message "
                f"or lower max_new_tokens")
        del kept[index]
        dropped += 1
        # A conversation must go on with a user turn: drop replies left without their question.
        while (index < len(kept) - 1 and kept[index].get("role") in ("assistant", "tool")):
            del kept[index]
            dropped += 1
        ids = encode(kept)
    return ids, dropped


def _oldest_droppable(messages: Sequence[dict]) -> Optional[int]:
    for i, m in enumerate(messages[:-1]):
        if m.get("role") not in _KEEP_ROLES:
            return i
    return None
