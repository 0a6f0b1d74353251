"""``exo-rk serve``: an OpenAI-compatible HTTP API over ``RKLLMInferenceEngine``, for use without exo.

Each chat completion drives the engine through the calls exo's node makes (template with the model's
tokenizer, ``infer_prompt``, then ``sample`` / ``infer_tensor`` per token until EOS), so the gateway and
exo exercise the same engine path. Routes: ``POST /v1/chat/completions`` (JSON or SSE ending with
``data: [DONE]``; ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, usage), ``GET /v1/models``,
``GET /health``. Errors are ``{"error": {"code", "message", "type"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Dict, Optional

import numpy as np
from aiohttp import web

from exo_rk import errors
from exo_rk.chat_request import ChatRequest, InvalidRequest, parse_chat_request
from exo_rk.compat import full_shard
from exo_rk.detok import TextStream
from exo_rk.engine import STATE_MESSAGES, STATE_PARAMS, RKLLMInferenceEngine
from exo_rk.gateway_images import handle_image_generations
from exo_rk.openapi import OPEN_ROUTES, handle_openapi
from exo_rk.tokenizer_store import encode_prompt
from rkllama_bridge.errors import BadRequest
from rkllama_bridge.reply_shaping import REASONING, ReplyStream, chat_inputs, prompt_opens_think, shape_reply
from rkllama_bridge.tool_calls import validate_tools

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", RKLLMInferenceEngine)
DEFAULT_MODEL_KEY = web.AppKey("default_model", str)


def error_response(status: int, code: str, message: str, headers: Optional[dict] = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"code": code, "message": message, "type": kind}}, status=status, headers=headers
    )


def _bridge_error_response(exc: errors.BridgeError) -> web.Response:
    if isinstance(exc, errors.ModelNotFound):
        return error_response(404, exc.code or "model_not_found", str(exc))
    if isinstance(exc, errors.BridgeBusy):
        retry = {"Retry-After": str(int(exc.retry_after or 1))}
        return error_response(429, "bridge_busy", str(exc), headers=retry)
    if isinstance(exc, errors.BadBridgeRequest):
        return error_response(400, exc.code or "bad_request", str(exc))
    if isinstance(exc, errors.BridgeUnavailable):
        return error_response(503, "bridge_unavailable", str(exc))
    return error_response(502, exc.code or "bridge_error", str(exc))


class Completion:
    """One chat completion: started (first token in hand) by ``start``, then iterated for text deltas."""

    def __init__(self, engine: RKLLMInferenceEngine, req: ChatRequest, tools: Optional[list] = None):
        self.engine = engine
        self.req = req
        self.tools = tools or []
        self.opened = False  # the prompt leaves the model inside a <think> block
        self.request_id = uuid.uuid4().hex
        self.created = int(time.time())
        self.shard = full_shard(req.model, engine.card_for(req.model).layers)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._result: Any = None
        self._state: Optional[dict] = None
        self.text: Optional[TextStream] = None

    async def start(self) -> None:
        """Template, encode and run the (1, N) call; raises before anything is sent to the client."""
        engine, req = self.engine, self.req
        await engine.ensure_shard(self.shard)
        tokenizer = engine.tokenizer
        messages, extra = chat_inputs(req.messages, self.tools, getattr(tokenizer, "chat_template", None))
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        self.opened = prompt_opens_think(prompt[-64:])
        self.prompt_tokens = len(encode_prompt(tokenizer, prompt))
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
        self._result, self._state = await engine.infer_prompt(self.request_id, self.shard, prompt, state)
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
    engine = request.app[ENGINE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "invalid_json", "the body is not valid JSON")
    try:
        req = parse_chat_request(body, request.app[DEFAULT_MODEL_KEY])
    except InvalidRequest as exc:
        return error_response(400, "invalid_request", str(exc))
    if req.model not in engine.cards:
        await _discover(engine)
    try:
        tools = validate_tools(body.get("tools"), body.get("tool_choice"))
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message)
    try:
        completion = Completion(engine, req, tools)
        await completion.start()
    except errors.UnknownModel as exc:
        return error_response(404, "model_not_found", str(exc))
    except errors.BridgeError as exc:
        return _bridge_error_response(exc)
    if not req.stream:
        text = "".join([delta async for delta in completion.deltas()])
        if completion.finish_reason == "error":
            return error_response(502, "bridge_failed", f"the bridge failed after {completion.completion_tokens} "
                                  "tokens; the reply is incomplete (see the gateway log)")
        reply = shape_reply(text, completion.opened,
                            bool(completion.tools))
        message: Dict[str, Any] = {"role": "assistant",
                                   "content": reply.content if reply.content or not reply.tool_calls else None}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return web.json_response(
            {
                "id": f"chatcmpl-{completion.request_id}",
                "object": "chat.completion",
                "created": completion.created,
                "model": req.model,
                "system_fingerprint": "exo-rk",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if reply.tool_calls else completion.finish_reason,
                    }
                ],
                "usage": completion.usage(),
            }
        )
    return await _stream(request, completion)


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


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) answer the same JSON shape as the handlers' errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return error_response(exc.status, code, exc.text or exc.reason, headers=headers)


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
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=middlewares)
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
