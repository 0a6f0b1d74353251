"""OpenAI tool calling for chat templates in the Qwen / Hermes style, independent of HTTP.

- ``validate_tools(tools, tool_choice)`` checks a request's ``tools`` / ``tool_choice`` and returns the
  tools to show the model (none for ``"none"``, only the named one for a forced function).
- ``template_messages(messages)`` turns OpenAI assistant ``tool_calls`` (arguments as JSON strings) into
  what Hugging Face chat templates expect (arguments as objects).
- ``tools_system_text(tools)`` is the Hermes-style instruction for templates that ignore ``tools``.
- ``parse_tool_calls(text)`` finds ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
  and returns the remaining content and OpenAI ``tool_calls`` (arguments as JSON strings).
- ``ToolCallStream`` streams content until a ``<tool_call>`` starts and keeps the calls for the end.

``tool_choice: "required"`` cannot be enforced by sampling here: the tools are shown and the reply is
parsed as for ``"auto"``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import List, Optional, Sequence, Tuple

from .errors import BadRequest

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def validate_tools(tools: object, tool_choice: object) -> List[dict]:
    """The tools to render for this request (a 400 names what is wrong)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(_is_function_tool(t) for t in tools):
        raise BadRequest("'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": str, ...}}",
                         code="invalid_tools")
    if tool_choice is None or tool_choice in ("auto", "required"):
        return list(tools)
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
        wanted = tool_choice["function"]["name"]
        chosen = [t for t in tools if t["function"]["name"] == wanted]
        if not chosen:
            raise BadRequest(f"tool_choice names {wanted!r}, which is not among 'tools'", code="invalid_tools")
        return chosen
    raise BadRequest("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                     "\"function\": {\"name\": ...}}", code="invalid_tools")


def _is_function_tool(tool: object) -> bool:
    return (isinstance(tool, dict) and tool.get("type", "function") == "function"
            and isinstance(tool.get("function"), dict) and isinstance(tool["function"].get("name"), str))


def template_messages(messages: Sequence[dict]) -> List[dict]:
    """Messages as chat templates expect them: tool-call arguments as objects, not JSON strings."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m = {**m, "tool_calls": [_call_for_template(c) for c in calls if isinstance(c, dict)]}
        out.append(m)
    return out


def _call_for_template(call: dict) -> dict:
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # keep the string: the template shows what the client sent
    return {**call, "function": fn}


def template_supports_tools(chat_template: Optional[str]) -> bool:
    return bool(chat_template) and "tools" in chat_template


def tools_system_text(tools: Sequence[dict]) -> str:
    """A Hermes-style tool instruction, for models whose template does not render ``tools`` itself."""
    signatures = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{signatures}\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


def with_tools_in_system(messages: Sequence[dict], tools: Sequence[dict]) -> List[dict]:
    """``messages`` with the tool instruction appended to (or inserted as) the system message."""
    text = tools_system_text(tools)
    out = list(messages)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{text}".strip()}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def parse_tool_calls(text: str) -> Tuple[str, List[dict]]:
    """(content outside the tool-call blocks, OpenAI tool_calls). A block whose JSON does not parse as
    {"name": str, "arguments": ...} is left in the content, so nothing the model said is lost."""
    calls: List[dict] = []
    kept: List[str] = []
    pos = 0
    for match in _BLOCK.finditer(text):
        call = _call_from_json(match.group(1))
        if call is None:
            continue
        kept.append(text[pos:match.start()])
        pos = match.end()
        calls.append(call)
    kept.append(text[pos:])
    return "".join(kept).strip() if calls else text, calls


def _call_from_json(raw: str) -> Optional[dict]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": arguments}}


class ToolCallStream:
    """Streams content up to the first ``<tool_call>``; everything from there on is kept and parsed by
    ``finish()``, which returns (late content, tool_calls)."""

    def __init__(self):
        self._held = ""
        self._in_call = False

    def push(self, text: str) -> str:
        if self._in_call:
            self._held += text
            return ""
        self._held += text
        at = self._held.find(OPEN)
        if at >= 0:
            out, self._held, self._in_call = self._held[:at], self._held[at:], True
            return out
        keep = next((k for k in range(min(len(OPEN) - 1, len(self._held)), 0, -1)
                     if self._held.endswith(OPEN[:k])), 0)
        out, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        return out

    def finish(self) -> Tuple[str, List[dict]]:
        held, self._held = self._held, ""
        if not self._in_call:
            return held, []
        return parse_tool_calls(held)
