"""Token-caching mode for servers that answer in one shot (a stock rkllama, or ``stream: false``).

The whole conversation goes to ``POST /generate`` once as a message list; the reply is re-tokenized with
the model's tokenizer and handed to exo one token per call. The cache of a request is dropped at its end
or by the engine's TTL. ``messages_from_chatml`` recovers the message list from a ChatML prompt when
the caller did not supply the messages themselves.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.S)
_PHI3 = re.compile(r"<\|(system|user|assistant)\|>\n?(.*?)<\|end\|>", re.S)


def messages_from_prompt(prompt: str) -> Optional[List[Dict[str, str]]]:
    """The messages of a templated prompt in ChatML (Qwen, SmolLM) or Phi-3 form; None if neither.

    The open assistant turn the template adds for generation has no end marker and is not matched.
    """
    for pattern in (_CHATML, _PHI3):
        found = [{"role": role, "content": content} for role, content in pattern.findall(prompt)]
        if found:
            return found
    return None


class CachedReply:
    """The tokens of a reply received in one piece, served in order. Same surface as a stream session."""

    def __init__(self, request_id: str, token_ids: Sequence[int]):
        self.request_id = request_id
        self.token_ids = [int(t) for t in token_ids]
        self.tokens_served = 0
        self.limit: Optional[int] = None  # tokens after which the engine ends the request (exo's limits)
        self.ended_by: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.ended_by is not None

    @property
    def reader_running(self) -> bool:
        return False

    async def next_token(self) -> Optional[int]:
        if self.done or self.tokens_served >= len(self.token_ids):
            self.ended_by = self.ended_by or "stop"
            return None
        token = self.token_ids[self.tokens_served]
        self.tokens_served += 1
        return token

    def cancel(self) -> None:
        self.ended_by = self.ended_by or "cancelled"
        self.token_ids = []


def plain_messages(messages: Sequence[Any]) -> List[Dict[str, Any]]:
    """Messages as plain dicts (exo passes its own ``Message`` objects with ``to_dict()``)."""
    out = []
    for message in messages:
        if hasattr(message, "to_dict"):
            message = message.to_dict()
        out.append({"role": message["role"], "content": message["content"]})
    return out
