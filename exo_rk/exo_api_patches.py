"""Patches of legacy exo's ChatGPT API (``exo.api.chatgpt_api``) for the models the RKLLM engine serves.

Imported by the hook only when exo's API module loads. Facts of exo 5f18faec1 these rely on:

- ``parse_chat_request(data, default_model)`` builds ``ChatCompletionRequest(model, messages, temperature,
  tools)``: ``max_tokens`` is dropped, and the node only stops at EOS or ``--max-generate-tokens``.
- ``generate_completion(chat_request, tokenizer, prompt, request_id, tokens, stream, finish_reason,
  object_type)`` is a module global the handlers look up at call time; it decodes ``tokens`` as given, so
  the EOS token the node appended shows as ``<|im_end|>``. ``finish_reason`` is ``"stop"`` when the last
  token is EOS, else ``"length"`` (``None`` for the chunks before the last).
- ``ChatGPTAPI.__init__(node, inference_engine_classname, response_timeout=90,
  on_chat_completion_request=None, default_model=None, system_prompt=None)`` binds its routes to bound
  methods; ``self.app`` is the aiohttp application. A streamed reply is SSE chunks then ``write_eof()``,
  without ``data: [DONE]``. A model starting with ``gpt-`` or not in ``model_cards`` runs the default model.
- ``handle_model_support`` (``GET /modelpool``) streams ``shard_downloader.get_shard_download_status``,
  which asks the hub for every card of the engine and retries for minutes when offline.

Every patch changes nothing for models served by another engine.
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any, Callable, List, Optional, Tuple

from aiohttp import web

log = logging.getLogger("exo_rk.exo_api")

Wrap = Callable[[Any, str, Callable[[Any], Any]], None]
IsRK = Callable[[Any], bool]
CHAT_PATHS = ("/chat/completions", "/v1/chat/completions")
CUT_SHORT = ("error", "timeout")  # how the engine ends a request whose bridge failed after the first token


def patch_api_module(mod: Any, wrap: Wrap, is_rk: IsRK) -> None:
    apis: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def engine_serving(model: Optional[str]) -> Any:
        for api in list(apis):
            engine = api.node.inference_engine
            if is_rk(engine) and model is not None and engine.serves(model):
                return engine
        return None

    wrap(mod, "parse_chat_request", keep_max_tokens)
    wrap(mod, "generate_completion", lambda original: served_completion(original, engine_serving))
    wrap(mod.ChatGPTAPI, "__init__", lambda original: api_init(original, mod, apis, engine_serving))
    wrap(mod.ChatGPTAPI, "handle_model_support", lambda original: model_pool_at_once(original, is_rk))


def keep_max_tokens(original: Callable) -> Callable:
    """``max_tokens`` (or ``max_completion_tokens``) stays on the parsed request as ``max_tokens``."""

    def parse_chat_request(data: dict, default_model: str):
        request = original(data, default_model)
        limit = data.get("max_completion_tokens", data.get("max_tokens"))
        valid = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        request.max_tokens = limit if valid else None
        return request

    return parse_chat_request


def reply_as_served(engine: Any, tokenizer: Any, request_id: str, tokens: List[int],
                    finish_reason: Optional[str]) -> Tuple[List[int], Optional[str]]:
    """The tokens without the EOS exo appended, and the finish reason the engine knows: ``error`` for a
    reply cut short by a failing bridge (logged with the request id), ``length`` at ``max_tokens``."""
    if tokens and tokens[-1] == getattr(tokenizer, "eos_token_id", None):
        tokens = tokens[:-1]
    if finish_reason is None:
        return tokens, None
    ended = engine.finish_reason(request_id)
    if ended in CUT_SHORT:
        log.warning("exo request %s: the reply was cut short (%s on the bridge); finish_reason error",
                    request_id, ended)
        return tokens, "error"
    return tokens, "length" if ended == "length" else finish_reason


def served_completion(original: Callable, engine_serving: Callable[[Optional[str]], Any]) -> Callable:
    def generate_completion(chat_request, tokenizer, prompt, request_id, tokens, stream, finish_reason,
                            object_type):
        engine = engine_serving(getattr(chat_request, "model", None))
        if engine is not None:
            tokens, finish_reason = reply_as_served(engine, tokenizer, request_id, list(tokens), finish_reason)
        return original(chat_request, tokenizer, prompt, request_id, tokens, stream, finish_reason, object_type)

    return generate_completion


def api_init(original: Callable, mod: Any, apis: "weakref.WeakSet[Any]",
             engine_serving: Callable[[Optional[str]], Any]) -> Callable:
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        apis.add(self)
        downstream = self.on_chat_completion_request

        def on_chat_completion_request(request_id, chat_request, prompt):
            engine = engine_serving(chat_request.model)
            if engine is not None:
                engine.remember_messages(request_id, chat_request.messages, getattr(chat_request, "max_tokens", None))
            if downstream is not None:
                return downstream(request_id, chat_request, prompt)
            return None

        self.on_chat_completion_request = on_chat_completion_request

        async def end_sse_with_done(request: web.Request, response: web.StreamResponse) -> None:
            if request.path in CHAT_PATHS and response.content_type == "text/event-stream":
                model = effective_model(self, mod, await _json_or_none(request))
                if engine_serving(model) is not None:
                    done_before_eof(response)

        self.app.on_response_prepare.append(end_sse_with_done)

    return __init__


async def _json_or_none(request: web.Request) -> Optional[dict]:
    try:
        data = await request.json()  # exo's handler read the body already: aiohttp keeps it
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def effective_model(api: Any, mod: Any, data: Optional[dict]) -> str:
    """The model exo runs for a request body: its own fallback to the default model included."""
    model = (data or {}).get("model") or api.default_model
    if not isinstance(model, str) or model.startswith("gpt-") or model not in mod.model_cards:
        return api.default_model
    return model


def done_before_eof(response: web.StreamResponse) -> None:
    """Make the response's (first) ``write_eof`` send ``data: [DONE]`` first, as OpenAI streams end."""
    write_eof = response.write_eof
    sent = False

    async def write_done_then_eof(data: bytes = b"") -> None:
        nonlocal sent
        if not sent:
            sent = True
            await response.write(b"data: [DONE]\n\n")
        await write_eof(data)

    response.write_eof = write_done_then_eof


def model_pool_at_once(original: Callable, is_rk: IsRK) -> Callable:
    async def handle_model_support(self, request: web.Request) -> web.StreamResponse:
        engine = self.node.inference_engine
        if not is_rk(engine):
            return await original(self, request)
        response = web.StreamResponse(status=200, reason="OK", headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive"})
        await response.prepare(request)
        for model_id in engine.cards:  # the bridges hold the weights: every card is "downloaded"
            status = {"downloaded": True, "download_percentage": 100, "total_size": 0, "total_downloaded": 0}
            await response.write(f"data: {json.dumps({model_id: status})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return handle_model_support
