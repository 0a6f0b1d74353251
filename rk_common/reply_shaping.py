"""Shaping a chat reply for OpenAI/Ollama clients: the reasoning block split off, Qwen/Hermes tool calls
parsed out, and the conversation prepared so the model sees the tools. Used by the bridge's OpenAI and
Ollama routes; free of HTTP so another OpenAI surface (the gateway) can use it on its text stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from .reasoning import CONTENT, REASONING, ReasoningSplitter, prompt_opens_think, split_reasoning
from .tool_calls import (
    ToolCallStream,
    parse_tool_calls,
    template_messages,
    template_supports_tools,
    with_tools_in_system,
)

Part = Tuple[str, str]  # ("reasoning" | "content", text)


def chat_inputs(messages: Sequence[dict], tools: Sequence[dict], chat_template: Optional[str],
                system_prompt: Optional[str] = None) -> Tuple[List[dict], dict]:
    """(messages, extra template variables) that show ``tools`` to the model: through the template's own
    ``tools`` support when it has it, else as a Hermes-style system instruction (after the model's
    default ``system_prompt`` if the conversation has no system message)."""
    msgs = template_messages(messages)
    if not tools:
        return msgs, {}
    if template_supports_tools(chat_template):
        return msgs, {"tools": list(tools)}
    if system_prompt and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return with_tools_in_system(msgs, tools), {}


@dataclass
class ShapedReply:
    content: str
    reasoning: str = ""
    tool_calls: List[dict] = field(default_factory=list)


def shape_reply(text: str, opened: bool = False, tools: bool = False) -> ShapedReply:
    """A complete reply split into reasoning, content and (when tools were offered) tool calls."""
    reasoning, content = split_reasoning(text, opened)
    calls: List[dict] = []
    if tools:
        content, calls = parse_tool_calls(content)
    return ShapedReply(content, reasoning, calls)


class ReplyStream:
    """The streaming counterpart of :func:`shape_reply`: ``push(text)`` gives the parts ready to send,
    ``finish()`` the remaining parts and the tool calls."""

    def __init__(self, opened: bool = False, tools: bool = False):
        self._reasoning = ReasoningSplitter(opened)
        self._tools = ToolCallStream() if tools else None

    def push(self, text: str) -> List[Part]:
        return self._route(self._reasoning.push(text))

    def finish(self) -> Tuple[List[Part], List[dict]]:
        parts = self._route(self._reasoning.finish())
        calls: List[dict] = []
        if self._tools is not None:
            late, calls = self._tools.finish()
            if late:
                parts.append((CONTENT, late))
        return parts, calls

    def _route(self, parts: List[Part]) -> List[Part]:
        out: List[Part] = []
        for kind, text in parts:
            if kind == CONTENT and self._tools is not None:
                text = self._tools.push(text)
            if text:
                out.append((kind, text))
        return out


__all__ = ["REASONING", "CONTENT", "chat_inputs", "shape_reply", "ReplyStream", "ShapedReply", "prompt_opens_think"]
