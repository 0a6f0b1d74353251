"""``exo-rk serve``: an OpenAI-compatible HTTP API over ``RKLLMInferenceEngine``, for use without exo.

Each chat completion drives the engine through the calls exo's node makes (template with the model's
tokenizer, encode, the (1, N) ``infer_tensor`` call — what ``infer_prompt`` does —, then ``sample`` /
``infer_tensor`` per token until EOS), so the gateway and exo exercise the same engine path. Templating,
tokenizing and parsing large bodies run on worker threads (``exo_rk.gateway_body``), after a character
limit and before the context budget is checked (``exo_rk.prompt_limits``), so no prompt stalls the other
streams and nothing that cannot fit is sent to a bridge. A client that hangs up, streamed or not,
cancels its handler, which aborts the generation on the board.

Routes: ``POST /v1/chat/completions`` (JSON or SSE ending with
``data: [DONE]``; ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, usage), ``POST /v1/embeddings``
(``exo_rk.gateway_embeddings``), ``GET /v1/models``,
``GET /health``. Errors are OpenAI's ``{"error": {"code", "message", "type", "param"}}`` with a 4xx/5xx
status; the chat request and reply are :mod:`rk_common.openai_chat`, the same as the bridge's.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import numpy as np
from aiohttp import web

from exo_rk import errors
from exo_rk.compat import full_shard
from exo_rk.detok import TextStream
from exo_rk.engine import STATE_IMAGES, STATE_MESSAGES, STATE_PARAMS, RKLLMInferenceEngine
from exo_rk.gateway_body import install_workers, read_json, run_cpu
from exo_rk.gateway_context import DEFAULT_MODEL_KEY, ENGINE_KEY, LIFECYCLE_KEY, Lifecycle, bridge_error, request_id
from exo_rk.gateway_embeddings import handle_embeddings
from exo_rk.gateway_images import handle_image_generations
from exo_rk.openapi import handle_openapi
from exo_rk.prompt_limits import check_context, check_prompt_chars
from exo_rk.tokenizer_store import encode_prompt
from rk_common import aiohttp_http
from rk_common.auth import bearer_auth
from rk_common.chat_images import IMAGE_MARK
from rk_common.errors import ApiError
from rk_common.openai_chat import (
    SSE_DONE,
    ChatReply,
    ChatRequest,
    TextCompletionReply,
    parse_chat_request,
    parse_completion_request,
    sse,
)
from rk_common.reply_shaping import chat_inputs, prompt_opens_think

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


class Completion:
    """One chat completion: started (first token in hand) by ``start``, then iterated for text deltas."""

    def __init__(self, engine: RKLLMInferenceEngine, req: ChatRequest, model: str, *, request_id: str,
                 lifecycle: Optional[Lifecycle] = None):
        self.engine = engine
        self.lifecycle = lifecycle or Lifecycle()
        self.req = req
        self.model = model
        self.opened = False  # the prompt leaves the model inside a <think> block
        self.request_id = request_id
        self.shard = full_shard(model, engine.card_for(model).layers)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._result: Any = None
        self._state: Optional[dict] = None
        self.text: Optional[TextStream] = None
        self.images: Optional[Dict[str, Any]] = None  # the native stream's images and their positions

    def _prompt(self, tokenizer: Any) -> Tuple[List[Dict[str, Any]], str, List[int]]:
        """(messages, templated prompt, token ids): CPU work, run on a worker thread. With images, the
        text between them is encoded piece by piece and ``self.images`` says where each one stands."""
        messages, extra = chat_inputs(self.req.messages, self.req.tools, getattr(tokenizer, "chat_template", None))
        images = [data for m in messages for data in (m.get("images") or ())]
        messages = [{k: v for k, v in m.items() if k != "images"} for m in messages]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        if not images:
            return messages, prompt, encode_prompt(tokenizer, prompt)
        pieces = prompt.split(IMAGE_MARK)
        if len(pieces) != len(images) + 1:
            raise ApiError(f"the chat template kept {len(pieces) - 1} of the {len(images)} images", status=400,
                           code="invalid_messages")
        ids: List[int] = []
        positions: List[int] = []
        for i, piece in enumerate(pieces):
            ids.extend(encode_prompt(tokenizer, piece) if piece else [])
            if i < len(images):
                positions.append(len(ids))
        self.images = {"images": [base64.b64encode(data).decode("ascii") for data in images],
                       "image_positions": positions}
        return messages, "".join(pieces), ids

    async def start(self, app: web.Application) -> None:
        """Template and encode (on ``app``'s worker threads), check the context budget, run the (1, N)
        call; raises before anything is sent to the client."""
        engine, req = self.engine, self.req
        await engine.ensure_shard(self.shard)
        tokenizer = engine.tokenizer
        messages, prompt, ids = await run_cpu(app, self._prompt, tokenizer)
        self.opened = prompt_opens_think(prompt[-64:])
        self.prompt_tokens = len(ids)
        info = engine.loaded_info(self.model)
        check_context(len(ids), req.max_tokens, info.num_ctx if info else None, self.model)
        params = {k: v for k, v in (("max_new_tokens", req.max_tokens), ("temperature", req.temperature),
                                    ("top_p", req.top_p), ("seed", req.seed)) if v is not None}
        state = {STATE_PARAMS: params, STATE_MESSAGES: messages}
        if self.images:
            state[STATE_IMAGES] = self.images
        tokens = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        try:
            self._result, self._state = await engine.infer_tensor(self.request_id, self.shard, tokens, state)
        except asyncio.CancelledError:  # the client left before the first token: stop the board too
            self.abandon()
            raise
        self.text = TextStream(tokenizer, req.stop)

    async def deltas(self) -> AsyncIterator[str]:
        """Text pieces as tokens arrive; sets ``finish_reason`` (the bridge's word for how the generation
        ended: stop, length, timeout, error...). Leaving early aborts the generation."""
        engine, text = self.engine, self.text
        try:
            while True:
                token = await engine.sample(self._result)
                await engine.ensure_shard(self.shard)
                if token.item() == engine.tokenizer.eos_token_id:
                    # "error": the bridge failed after the first token; the engine ended the request
                    # with EOS (exo's contract) and the client must see that the reply is cut short.
                    self.finish_reason = engine.finish_reason(self.request_id) or "stop"
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
                if self.lifecycle.cut:  # the gateway is stopping and the grace period is over
                    self.finish_reason = "shutdown"
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

    def usage(self) -> Dict[str, Any]:
        """The counts of this side; a stock server's own counts win over them (the reply was re-tokenized
        here, which is only an estimate of what the server generated), and re-tokenized counts of a stock
        server that reported none are marked ``estimated``."""
        prompt, completion = self.prompt_tokens, self.completion_tokens
        server = self.engine.server_usage(self.request_id) or {}
        stock = not self.engine.is_native(self.model)
        prompt = int(server.get("prompt_tokens", prompt)) if stock else prompt
        completion = int(server.get("completion_tokens", completion)) if stock else completion
        usage: Dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if stock and "completion_tokens" not in server:
            usage["estimated"] = True
        if "tokens_per_second" in server:
            usage["tokens_per_second"] = server["tokens_per_second"]
        return usage

    def failure(self) -> ApiError:
        return ApiError(f"the bridge failed after {self.completion_tokens} tokens; the reply is incomplete "
                        f"(request id {self.request_id})", status=502, code="bridge_failed")


class TextCompletion(Completion):
    """A ``/v1/completions`` request: the prompt goes to the model untemplated (a one-shot server, which
    takes messages only, gets it as one user turn)."""

    def __init__(self, engine: RKLLMInferenceEngine, req: ChatRequest, model: str, prompt: str, *,
                 request_id: str, lifecycle: Optional[Lifecycle] = None):
        super().__init__(engine, req, model, request_id=request_id, lifecycle=lifecycle)
        self.raw_prompt = prompt

    def _prompt(self, tokenizer: Any) -> Tuple[List[Dict[str, Any]], str, List[int]]:
        return [{"role": "user", "content": self.raw_prompt}], self.raw_prompt, encode_prompt(tokenizer,
                                                                                            self.raw_prompt)


def _counted(handler):
    """A stopping gateway turns new requests away; running ones are counted for the graceful stop."""
    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        lifecycle = request.app[LIFECYCLE_KEY]
        if lifecycle.stopping:
            raise ApiError("the gateway is stopping; retry on another one", status=503, code="shutting_down",
                           headers={"Retry-After": "1"})
        lifecycle.active += 1
        try:
            return await handler(request)
        finally:
            lifecycle.active -= 1
    return counted


async def _started(request: web.Request, req: ChatRequest, make) -> Completion:
    engine = request.app[ENGINE_KEY]
    check_prompt_chars(req, engine.settings.max_prompt_chars)
    model = req.model or request.app[DEFAULT_MODEL_KEY]
    rid = request_id(request)
    try:
        if model not in engine.cards:
            await engine.discover_models()  # a bridge model without a card gets one
        completion = make(engine, model, rid, request.app[LIFECYCLE_KEY])
        await completion.start(request.app)
    except errors.UnknownModel as exc:
        raise ApiError(str(exc), status=404, code="model_not_found") from None
    except errors.BridgeError as exc:
        raise bridge_error(exc, rid) from None
    return completion


@_counted
async def handle_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's legacy ``/v1/completions``: the prompt as it is, the text back whole or as SSE chunks."""
    prompt, req = parse_completion_request(await read_json(request))
    completion = await _started(request, req, lambda engine, model, rid, lifecycle: TextCompletion(
        engine, req, model, prompt, request_id=rid, lifecycle=lifecycle))
    reply = TextCompletionReply(completion.model, completion_id=f"cmpl-{completion.request_id}")
    if not req.stream:
        text = "".join([delta async for delta in completion.deltas()])
        if completion.finish_reason == "error":
            raise completion.failure()
        return web.json_response(reply.completion(text, completion.finish_reason, completion.usage()))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    deltas = completion.deltas()
    try:
        async for delta in deltas:
            await response.write(sse(reply.chunk(delta)))
        error = completion.failure().to_json()["error"] if completion.finish_reason == "error" else None
        for item in reply.finish(completion.finish_reason, completion.usage(), req.include_usage, error):
            await response.write(sse(item))
        await response.write(SSE_DONE)
    except ConnectionResetError:
        log.info("client left request %s; generation aborted", completion.request_id)
    finally:
        await deltas.aclose()
    return response


@_counted
async def handle_chat(request: web.Request) -> web.StreamResponse:
    req = parse_chat_request(await read_json(request))
    completion = await _started(request, req, lambda engine, model, rid, lifecycle: Completion(
        engine, req, model, request_id=rid, lifecycle=lifecycle))
    model = completion.model
    reply = ChatReply(model, tools=bool(req.tools), opened=completion.opened, include_usage=req.include_usage,
                      completion_id=f"chatcmpl-{completion.request_id}")
    if not req.stream:
        return await _whole_reply(completion, reply)
    return await _stream(request, completion, reply)


async def _whole_reply(completion: Completion, reply: ChatReply) -> web.Response:
    """The non-streamed answer. A client that hangs up meanwhile cancels this handler (the app's
    ``handler_cancellation``), which aborts the board's generation."""
    try:
        text = "".join([delta async for delta in completion.deltas()])
    except asyncio.CancelledError:
        completion.abandon()  # the deltas' own cleanup aborts too, but only once they are collected
        raise
    if completion.finish_reason == "error":
        raise completion.failure()
    return web.json_response(reply.completion(text, completion.finish_reason, completion.usage()))


async def _stream(request: web.Request, completion: Completion, reply: ChatReply) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    deltas = completion.deltas()
    try:
        await response.write(sse(reply.first_chunk()))
        async for delta in deltas:
            for item in reply.push(delta):
                await response.write(sse(item))
        failed = completion.finish_reason == "error"
        error = completion.failure().to_json()["error"] if failed else None
        for item in reply.finish(completion.finish_reason, completion.usage(), error):
            await response.write(sse(item))
        await response.write(SSE_DONE)
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


async def handle_ready(request: web.Request) -> web.Response:
    """Readiness, for probes: 200 once a bridge answers, 503 while none does yet or while stopping."""
    state = "stopping" if request.app[LIFECYCLE_KEY].stopping else await _bridges_state(request.app[ENGINE_KEY])
    return web.json_response({"status": state}, status=200 if state == "ready" else 503)


async def _bridges_state(engine: RKLLMInferenceEngine) -> str:
    backend = engine.backend
    bridges = getattr(backend, "bridges", None)
    try:
        if bridges is not None:
            await backend._ensure_started()
            return "ready" if any(b["healthy"] for b in bridges()) else "loading"
        await backend.health()
        return "ready"
    except errors.BridgeError:
        return "loading"


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus text of the bridge pool (per-bridge outstanding, errors, ejections); empty for one bridge."""
    render = getattr(request.app[ENGINE_KEY].backend, "metrics_text", None)
    body = render() if render is not None else b""
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(
    engine: RKLLMInferenceEngine, default_model: str, token: Optional[str] = None
) -> web.Application:
    """The gateway's aiohttp application; the engine is cleaned up when the app shuts down. With
    ``token``, every route but ``/health`` needs ``Authorization: Bearer <token>``."""
    # handler_cancellation: a client that hangs up cancels its handler, which aborts its generation
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=aiohttp_http.middlewares(bearer_auth(token), MAX_BODY_BYTES),
                          handler_args={"handler_cancellation": True})
    aiohttp_http.install_signals(app)
    install_workers(app)
    app[ENGINE_KEY] = engine
    app[DEFAULT_MODEL_KEY] = default_model
    app[LIFECYCLE_KEY] = Lifecycle()
    app.router.add_post("/v1/chat/completions", handle_chat)
    app.router.add_post("/chat/completions", handle_chat)
    app.router.add_post("/v1/completions", handle_completions)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_post("/v1/embeddings", _counted(handle_embeddings))
    app.router.add_post("/v1/images/generations", handle_image_generations)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/health/ready", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/openapi.json", handle_openapi)

    async def close_engine(_app: web.Application) -> None:
        await engine.cleanup()

    app.on_cleanup.append(close_engine)
    return app
