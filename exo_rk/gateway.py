"""``exo-rk serve``: an OpenAI-compatible HTTP API over ``RKLLMInferenceEngine``, for use without exo.

Each chat completion drives the engine through the calls exo's node makes (template with the model's
tokenizer, encode, the (1, N) ``infer_tensor`` call — what ``infer_prompt`` does —, then ``sample`` /
``infer_tensor`` per token until EOS), so the gateway and exo exercise the same engine path. Templating,
tokenizing and parsing large bodies run on worker threads (``exo_rk.gateway_body``), after a character
limit and before the context budget is checked, so no prompt stalls the other streams and nothing that
cannot fit is sent to a bridge. A client that hangs up, streamed or not, cancels its handler, which
aborts the generation on the board. Routes: ``POST /v1/chat/completions`` (JSON or SSE ending with
``data: [DONE]``; ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, usage), ``GET /v1/models``,
``GET /health``. Errors: see ``exo_rk.gateway_errors``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import numpy as np
from aiohttp import web

from exo_rk import errors
from exo_rk.chat_request import ChatRequest, InvalidRequest, check_context, check_prompt_chars, parse_chat_request
from exo_rk.compat import full_shard
from exo_rk.detok import TextStream
from exo_rk.engine import STATE_MESSAGES, STATE_PARAMS, RKLLMInferenceEngine
from exo_rk.gateway_body import InvalidBody, install_workers, read_json, run_cpu
from exo_rk.gateway_errors import add_request_id, bridge_error_response, error_response, json_errors, request_id
from exo_rk.gateway_images import handle_image_generations
from exo_rk.openapi import OPEN_ROUTES, handle_openapi
from exo_rk.tokenizer_store import encode_prompt
from rkllama_bridge.errors import BadRequest
from rkllama_bridge.reply_shaping import REASONING, ReplyStream, chat_inputs, prompt_opens_think, shape_reply
from rkllama_bridge.tool_calls import validate_tools

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", RKLLMInferenceEngine)
DEFAULT_MODEL_KEY = web.AppKey("default_model", str)



class Completion:
    """One chat completion: started (first token in hand) by ``start``, then iterated for text deltas."""

    def __init__(self, engine: RKLLMInferenceEngine, req: ChatRequest, tools: Optional[list] = None, *,
                 request_id: str):
        self.engine = engine
        self.req = req
        self.tools = tools or []
        self.opened = False  # the prompt leaves the model inside a <think> block
        self.request_id = request_id
        self.created = int(time.time())
        self.shard = full_shard(req.model, engine.card_for(req.model).layers)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._result: Any = None
        self._state: Optional[dict] = None
        self.text: Optional[TextStream] = None

    def _prompt(self, tokenizer: Any) -> Tuple[List[Dict[str, Any]], str, List[int]]:
        """(messages, templated prompt, token ids): CPU work, run on a worker thread."""
        messages, extra = chat_inputs(self.req.messages, self.tools, getattr(tokenizer, "chat_template", None))
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return messages, prompt, encode_prompt(tokenizer, prompt)

    async def start(self, app: web.Application) -> None:
        """Template and encode (on ``app``'s worker threads), check the context budget, run the (1, N)
        call; raises before anything is sent to the client."""
        engine, req = self.engine, self.req
        await engine.ensure_shard(self.shard)
        tokenizer = engine.tokenizer
        messages, prompt, ids = await run_cpu(app, self._prompt, tokenizer)
        self.opened = prompt_opens_think(prompt[-64:])
        self.prompt_tokens = len(ids)
        info = engine.loaded_info(req.model)
        check_context(len(ids), req.max_tokens, info.num_ctx if info else None, req.model)
        params = {
            k: v
            for k, v in (
                ("max_new_tokens", req.max_tokens),
                ("temperature", req.temperature),
                ("top_p", req.top_p),
                ("seed", req.seed),
            )
            if v is not None
        }
        state = {STATE_PARAMS: params, STATE_MESSAGES: messages}
        tokens = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        try:
            self._result, self._state = await engine.infer_tensor(self.request_id, self.shard, tokens, state)
        except asyncio.CancelledError:  # the client left before the first token: stop the board too
            self.abandon()
            raise
        self.text = TextStream(tokenizer, req.stop)

    async def deltas(self) -> AsyncIterator[str]:
        """Text pieces as tokens arrive; sets ``finish_reason``. Leaving early aborts the generation."""
        engine, text = self.engine, self.text
        try:
            while True:
                token = await engine.sample(self._result)
                await engine.ensure_shard(self.shard)
                if token.item() == engine.tokenizer.eos_token_id:
                    # "error": the bridge failed after the first token; the engine ended the request
                    # with EOS (exo's contract) and the client must see that the reply is cut short.
                    ended = engine.finish_reason(self.request_id)
                    self.finish_reason = ended if ended in ("length", "error") else "stop"
                    break
                self.completion_tokens += 1
                delta = text.push(token.item())
                if delta:
                    yield delta
                if text.stop_hit:
                    self.finish_reason = "stop"
                    break
                if self.req.max_tokens is not None and self.completion_tokens >= self.req.max_tokens:
                    self.finish_reason = "length"
                    break
                self._result, self._state = await engine.infer_tensor(
                    self.request_id, self.shard, np.asarray(token).reshape(1, -1), self._state
                )
            tail = text.flush()
            if tail:
                yield tail
        finally:
            if self.request_id in engine.request_ids():
                engine.abort(self.request_id)

    def abandon(self) -> None:
        """The client left before its reply: abort the generation on the board."""
        log.info("client left request %s before its reply; generation aborted", self.request_id)
        if self.request_id in self.engine.request_ids():
            self.engine.abort(self.request_id)

    def usage(self) -> Dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def chunk(self, delta: Dict[str, Any], finish_reason: Optional[str] = None) -> bytes:
        body = {
            "id": f"chatcmpl-{self.request_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": "exo-rk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


async def handle_chat(request: web.Request) -> web.StreamResponse:
    started = await _start_completion(request)
    if isinstance(started, web.Response):
        return started
    if started.req.stream:
        return await _stream(request, started)
    return await _whole_reply(started)


async def _start_completion(request: web.Request) -> "Completion | web.Response":
    """A started completion (its first token in hand), or the error answer that refuses the request."""
    engine = request.app[ENGINE_KEY]
    try:
        body = await read_json(request)
        req = parse_chat_request(body, request.app[DEFAULT_MODEL_KEY])
        tools = validate_tools(body.get("tools"), body.get("tool_choice"))
        check_prompt_chars(req, tools, engine.settings.max_prompt_chars)
    except InvalidBody as exc:
        return error_response(400, "invalid_json", str(exc))
    except InvalidRequest as exc:
        return error_response(exc.status, exc.code, str(exc))
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message)
    rid = request_id(request)
    try:
        if req.model not in engine.cards:
            await engine.discover_models()  # a bridge model without a card gets one
        completion = Completion(engine, req, tools, request_id=rid)
        await completion.start(request.app)
    except InvalidRequest as exc:
        return error_response(exc.status, exc.code, str(exc))
    except errors.UnknownModel as exc:
        return error_response(404, "model_not_found", str(exc))
    except errors.BridgeError as exc:
        return bridge_error_response(exc, rid)
    return completion


async def _whole_reply(completion: Completion) -> web.Response:
    """The non-streamed answer. A client that hangs up meanwhile cancels this handler (the app's
    ``handler_cancellation``), which closes the deltas and so aborts the board's generation."""
    try:
        text = "".join([delta async for delta in completion.deltas()])
    except asyncio.CancelledError:
        completion.abandon()  # the deltas' own cleanup aborts too, but only once they are collected
        raise
    if completion.finish_reason == "error":
        return error_response(502, "bridge_failed", f"the bridge failed after {completion.completion_tokens} "
                              f"tokens; the reply is incomplete (request id {completion.request_id})")
    reply = shape_reply(text, completion.opened, bool(completion.tools))
    message: Dict[str, Any] = {"role": "assistant",
                               "content": reply.content if reply.content or not reply.tool_calls else None}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    finish = "tool_calls" if reply.tool_calls else completion.finish_reason
    return web.json_response({
        "id": f"chatcmpl-{completion.request_id}",
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.req.model,
        "system_fingerprint": "exo-rk",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": completion.usage(),
    })


def _part_chunk(completion: Completion, part: tuple) -> bytes:
    kind, text = part
    return completion.chunk({"reasoning_content": text} if kind == REASONING else {"content": text})


async def _stream(request: web.Request, completion: Completion) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    deltas = completion.deltas()
    try:
        shaper = ReplyStream(completion.opened, bool(completion.tools))
        await response.write(completion.chunk({"role": "assistant", "content": ""}))
        async for delta in deltas:
            for part in shaper.push(delta):
                await response.write(_part_chunk(completion, part))
        parts, calls = shaper.finish()
        for part in parts:
            await response.write(_part_chunk(completion, part))
        if calls:
            await response.write(completion.chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
        if completion.finish_reason == "error":
            failure = {"code": "bridge_failed", "message": f"the bridge failed after {completion.completion_tokens} "
                       "tokens; the reply is incomplete"}
            await response.write(f"data: {json.dumps({'error': failure})}\n\n".encode())
        await response.write(completion.chunk({}, "tool_calls" if calls else completion.finish_reason))
        if completion.req.include_usage:
            usage = json.loads(completion.chunk({})[6:])
            usage.update(choices=[], usage=completion.usage())
            await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
    except ConnectionResetError:
        log.info("client left request %s; generation aborted", completion.request_id)
    except asyncio.CancelledError:  # the hang-up noticed while waiting for a token
        log.info("client left request %s; generation aborted", completion.request_id)
        raise
    finally:
        await deltas.aclose()
    return response


async def _discover(engine: RKLLMInferenceEngine) -> list:
    try:
        return await engine.discover_models()
    except errors.BridgeError as exc:
        log.warning("could not list the bridge's models: %s", exc)
        return []


async def handle_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    ids = await _discover(engine)
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": mid, "object": "model", "created": 0, "owned_by": "exo-rk"} for mid in ids],
        }
    )


async def handle_health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response(
        {
            "status": "ok",
            "servers": list(engine.settings.servers),
            "mode": engine.settings.mode,
            "requests": len(engine.request_ids()),
        }
    )


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus text of the bridge pool (per-bridge outstanding, errors, ejections); empty for one bridge."""
    render = getattr(request.app[ENGINE_KEY].backend, "metrics_text", None)
    body = render() if render is not None else b""
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def token_middleware(token: str):
    """Every route but ``/health`` answers 401 without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()
    open_paths = {path for _, path in OPEN_ROUTES}

    @web.middleware
    async def require_token(request: web.Request, handler) -> web.StreamResponse:
        if request.path not in open_paths and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), expected
        ):
            return error_response(401, "unauthorized", "missing or wrong bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return require_token


def create_app(
    engine: RKLLMInferenceEngine, default_model: str, token: Optional[str] = None
) -> web.Application:
    """The gateway's aiohttp application; the engine is cleaned up when the app shuts down. With
    ``token``, every route but ``/health`` needs ``Authorization: Bearer <token>``."""
    middlewares = [json_errors] + ([token_middleware(token)] if token else [])
    # handler_cancellation: a client that hangs up cancels its handler, which aborts its generation
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=middlewares,
                          handler_args={"handler_cancellation": True})
    app.on_response_prepare.append(add_request_id)
    install_workers(app)
    app[ENGINE_KEY] = engine
    app[DEFAULT_MODEL_KEY] = default_model
    app.router.add_post("/v1/chat/completions", handle_chat)
    app.router.add_post("/chat/completions", handle_chat)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_post("/v1/images/generations", handle_image_generations)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/openapi.json", handle_openapi)

    async def close_engine(_app: web.Application) -> None:
        await engine.cleanup()

    app.on_cleanup.append(close_engine)
    return app
