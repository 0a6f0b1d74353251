"""Splitting a reasoning model's ``<think>…</think>`` block from its answer, whole or while streaming.

Reasoning models (Qwen3, DeepSeek-R1 and their RKLLM conversions) write their chain of thought between
``<think>`` and ``</think>`` before the answer. Some chat templates already put ``<think>`` at the end of
the prompt, so the output starts inside the block and only the closing tag appears: pass
``opened=True`` (see :func:`prompt_opens_think`) for those. Text before an opening tag that is only
whitespace is dropped; a block that never closes (the token budget ran out while thinking) is all
reasoning. Nothing here depends on HTTP, so any OpenAI-shaped surface can use it.
"""

from __future__ import annotations

from typing import List, Tuple

OPEN, CLOSE = "<think>", "</think>"
REASONING, CONTENT = "reasoning", "content"


def prompt_opens_think(prompt_text: str) -> bool:
    """Whether the templated prompt leaves the model inside a think block (ends with an open ``<think>``)."""
    tail = prompt_text.rstrip()
    return tail.endswith(OPEN)


def split_reasoning(text: str, opened: bool = False) -> Tuple[str, str]:
    """(reasoning, content) of a complete reply; reasoning is "" when the reply has no think block."""
    splitter = ReasoningSplitter(opened)
    parts = splitter.push(text) + splitter.finish()
    reasoning = "".join(t for kind, t in parts if kind == REASONING)
    content = "".join(t for kind, t in parts if kind == CONTENT)
    return reasoning.strip(), content


class ReasoningSplitter:
    """Incremental splitter: ``push(text)`` returns ``[(kind, text), ...]`` with kind "reasoning" or
    "content", holding back only what could be the start of a tag; ``finish()`` flushes the rest."""

    def __init__(self, opened: bool = False):
        self._state = REASONING if opened else "start"  # start: nothing but whitespace seen yet
        self._held = ""
        self._after_close = False  # strip the whitespace that follows </think>

    def push(self, text: str) -> List[Tuple[str, str]]:
        self._held += text
        out: List[Tuple[str, str]] = []
        while self._held:
            step = self._step()
            if step is None:
                break
            if step[1]:
                out.append(step)
        return out

    def finish(self) -> List[Tuple[str, str]]:
        held, self._held = self._held, ""
        if not held or (self._state == "start" and not held.strip()):
            return []
        kind = REASONING if self._state == REASONING else CONTENT
        return [(kind, held)]

    def _step(self):
        """Consume a prefix of ``_held``; None when more text is needed to decide."""
        held = self._held
        if self._state == "start":
            stripped = held.lstrip()
            if not stripped:
                return None
            if stripped.startswith(OPEN):
                self._held = stripped[len(OPEN):]
                self._state = REASONING
                return (REASONING, "")
            if OPEN.startswith(stripped):
                return None  # could still become <think>
            self._state = CONTENT
            return (CONTENT, "")
        if self._state == REASONING:
            at = held.find(CLOSE)
            if at >= 0:
                self._held = held[at + len(CLOSE):]
                self._state, self._after_close = CONTENT, True
                return (REASONING, held[:at])
            keep = _partial_suffix(held, CLOSE)
            self._held = held[len(held) - keep:]
            return (REASONING, held[:len(held) - keep]) if len(held) > keep else None
        if self._after_close:
            stripped = held.lstrip()
            if not stripped:
                self._held = ""
                return None
            self._after_close = False
            self._held = stripped
        piece, self._held = self._held, ""
        return (CONTENT, piece)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
