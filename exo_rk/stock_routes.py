"""The one-shot mode's protocol ladder: how to generate on a stock rkllama server as it really behaves.

A stock rkllama has no native token stream. What it has depends on the fork and version, so the server is
asked once (``/api/version``, ``/api/tags``, ``/models``, ``/current_model`` or ``/current_models``) and
each request uses the best route that works, in the order of :data:`ROUTES` (``RKLLM_STOCK_ROUTES``):

* ``openai`` — ``POST /v1/chat/completions`` with ``stream: true`` (SSE);
* ``ollama`` — ``POST /api/chat`` with ``stream: true`` (NDJSON);
* ``generate`` — ``POST /generate`` with ``stream: true`` (the original rkllama route: ``text/plain`` JSON
  chunks, ``finish_reason`` null until the last one);
* ``oneshot`` — ``POST /generate`` with ``stream: false``: the whole reply at once, cached by the engine.

A route that fails before its first piece (404/405, a 5xx) is skipped for that server from then on, with
one log line, and the next one is tried. A server that refuses system messages (its error says roles must
alternate, or ``RKLLM_MERGE_SYSTEM=always``) gets them merged into the first user turn. The pieces are
turned into token ids with the model's tokenizer one piece at a time (the concatenation decodes to the
text the server sent), so streaming routes keep the server's time to first token. The final event carries
the server's own counts when it sent them (``usage_source`` says which), and a reply whose piece count
does not match the server's count is reported: pieces lost at the end, or pieces of an earlier reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Set, Tuple

import aiohttp

from exo_rk import errors
from exo_rk.client import BridgeClient, GenerationParams, StreamEnd, StreamEvent, TokenEvent, _error_from_response
from exo_rk.settings import MERGE_MODES, parse_routes
from exo_rk.settings import STOCK_ROUTES as ROUTES

log = logging.getLogger(__name__)

_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat", "generate": "/generate", "oneshot": "/generate"}
_REFUSES_SYSTEM = ("roles must alternate", "system role not supported", "system message")


def merge_system(messages: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The system messages' text put in front of the first user turn (a user turn is added if none)."""
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system" and m["content"])
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}] + rest


class RouteFailed(Exception):
    """The route cannot serve this server (before any piece): try the next one."""


class SystemRefused(Exception):
    """The server refused the request because of its system message."""


@dataclass
class Discovery:
    """What a stock server said about itself."""

    version: Optional[str] = None
    models: List[str] = field(default_factory=list)
    loaded_route: Optional[str] = None  # /current_model (one model) or /current_models (several)
    ollama_api: bool = False  # /api/tags answered: the Ollama-compatible routes are probably there


@dataclass
class _Piece:
    text: str


@dataclass
class _Final:
    finish_reason: str
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    tokens_per_second: Optional[float] = None


class StockServer:
    """The ladder for one stock server, over a ``BridgeClient``'s HTTP session. Safe to share."""

    def __init__(self, client: BridgeClient, *, routes: Sequence[str] = ROUTES, merge: str = "auto",
                 unload_other: bool = False):
        self.client = client
        self.routes = tuple(routes)
        self.merge = merge
        self.unload_other = unload_other
        self.discovery: Optional[Discovery] = None
        self.failed: Set[str] = set()
        self.refuses_system = merge == "always"
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return self.client.base_url

    async def _get(self, path: str) -> Tuple[int, Any]:
        url = self.url + path
        try:
            async with self.client._http().get(url, timeout=self.client._timeout(self.client.call_timeout)) as resp:
                raw = await resp.read()
                try:
                    return resp.status, json.loads(raw)
                except ValueError:
                    return resp.status, None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise errors.BridgeUnavailable(f"stock server unreachable: {exc!r}", url=url) from exc

    async def discover(self) -> Discovery:
        """Ask the server what it speaks, once."""
        async with self._lock:
            if self.discovery is not None:
                return self.discovery
            found = Discovery()
            status, data = await self._get("/api/version")
            if status == 200 and isinstance(data, dict):
                found.version = str(data.get("version"))
            status, data = await self._get("/api/tags")
            if status == 200 and isinstance(data, dict):
                found.ollama_api = True
                found.models = [str(m.get("name")) for m in data.get("models") or [] if isinstance(m, dict)]
            if not found.models:
                status, data = await self._get("/models")
                if status == 200 and isinstance(data, dict):
                    found.models = [str(m) for m in data.get("models") or []]
            for path in ("/current_models", "/current_model"):
                status, _ = await self._get(path)
                if status in (200, 404) and not (status == 404 and _ is None):
                    found.loaded_route = path
                    break
            if not found.ollama_api:
                self.failed.update({"openai", "ollama"})
            log.info("%s: stock rkllama %s, %d models, loaded models at %s; routes %s", self.url,
                     found.version or "(no /api/version)", len(found.models), found.loaded_route or "(none)",
                     ", ".join(r for r in self.routes if r not in self.failed) or "none")
            self.discovery = found
            return found

    async def loaded_models(self) -> Optional[List[str]]:
        """The models loaded on the server now; None when it cannot say."""
        found = await self.discover()
        if found.loaded_route is None:
            return None
        status, data = await self._get(found.loaded_route)
        if not isinstance(data, dict):
            return None
        if found.loaded_route == "/current_model":
            return [str(data["model_name"])] if status == 200 and data.get("model_name") else []
        return [str(m.get("name") or m.get("model")) for m in data.get("models") or [] if isinstance(m, dict)]

    async def ensure_model(self, model: str) -> None:
        """Have ``model`` loaded: attach to it when it already is; a different loaded model is unloaded only
        when ``unload_other`` allows it."""
        await self.discover()
        loaded = await self.loaded_models()
        if loaded and model in loaded:
            log.info("%s: model %s is already loaded there; attaching to it", self.url, model)
            return
        try:
            await self.client.load_model(model)
            return
        except errors.BadBridgeRequest as exc:
            if "already loaded" not in str(exc).lower():
                raise
            refusal = exc
        loaded = await self.loaded_models()
        if loaded is None or model in loaded:
            # It cannot say which model it has; the first request will tell.
            log.info("%s: %s; attaching to the loaded model", self.url, refusal)
            return
        if not self.unload_other:
            raise errors.BadBridgeRequest(
                f"{self.url} has {', '.join(loaded)} loaded and serves one model at a time; set "
                f"RKLLM_STOCK_UNLOAD_OTHER=1 to let this engine unload it for {model}", status=409,
                code="model_conflict", url=self.url)
        for other in loaded:
            log.warning("%s: unloading %s to load %s (RKLLM_STOCK_UNLOAD_OTHER)", self.url, other, model)
            await self.client.unload_model(other)
        await self.client.load_model(model)

    # -- generation ------------------------------------------------------------------------------

    def stream(self, model: str, messages: Sequence[Dict[str, Any]], params: GenerationParams,
               encode: Callable[[str], List[int]], request_id: str = "") -> AsyncIterator[StreamEvent]:
        """Token events then one ``StreamEnd`` for ``messages``, through the best working route."""
        return self._stream(model, list(messages), params, encode, request_id)

    async def _stream(self, model, messages, params, encode, request_id) -> AsyncIterator[StreamEvent]:
        await self.discover()
        last: Optional[BaseException] = None
        for route in self.routes:
            if route in self.failed:
                continue
            sent = merge_system(messages) if self.refuses_system else messages
            for attempt in range(2):
                pieces = 0
                try:
                    async for item in self._route(route, model, sent, params):
                        if isinstance(item, _Piece):
                            pieces += 1
                            for token_id in encode(item.text) if item.text else ():
                                yield TokenEvent(token_id, "")
                            continue
                        yield self._end(item, pieces, route, request_id)
                        return
                    if pieces:
                        raise errors.BridgeUnavailable(f"{route} stream ended without its final chunk after "
                                                       f"{pieces} pieces: the tail of the reply is lost",
                                                       url=self.url)
                    raise RouteFailed(f"{route}: empty answer")
                except SystemRefused as exc:
                    if attempt or self.merge == "never" or pieces:
                        raise errors.BadBridgeRequest(f"{self.url} refused the system message: {exc}",
                                                      url=self.url) from None
                    self.refuses_system = True
                    sent = merge_system(messages)
                    log.warning("%s refuses system messages (%s): merging them into the first user turn from "
                                "now on", self.url, exc)
                    continue
                except RouteFailed as exc:
                    if pieces:
                        raise errors.BridgeUnavailable(str(exc), url=self.url) from None
                    self.failed.add(route)
                    log.warning("%s: route %s fails (%s); using the next one from now on", self.url, route, exc)
                    last = exc
                    break
        raise errors.BridgeUnavailable(f"{self.url}: no generation route works (last: {last})", url=self.url)

    def _end(self, final: _Final, pieces: int, route: str, request_id: str) -> StreamEnd:
        usage: Dict[str, Any] = {}
        if final.prompt_tokens is not None:
            usage["prompt_tokens"] = int(final.prompt_tokens)
        if final.completion_tokens is not None:
            usage["completion_tokens"] = int(final.completion_tokens)
            counted = int(final.completion_tokens)
            if route != "oneshot" and counted > pieces:
                log.warning("request %s: %s counted %d tokens but sent %d: the tail of the reply was lost "
                            "(a known rkllama fault under load)", request_id, self.url, counted, pieces)
            elif route != "oneshot" and counted < pieces:
                log.warning("request %s: %s sent %d pieces for %d tokens: the reply starts with the lost tail "
                            "of an earlier one (a known rkllama fault under load)", request_id, self.url,
                            pieces, counted)
        if final.tokens_per_second:
            usage["tokens_per_second"] = float(final.tokens_per_second)
        timings = {"route": route}
        return StreamEnd(finish_reason=final.finish_reason, usage=usage, timings=timings)

    async def _route(self, route: str, model: str, messages: List[Dict[str, Any]],
                     params: GenerationParams) -> AsyncIterator[Any]:
        """Pieces then one ``_Final``; ``RouteFailed``/``SystemRefused`` before the first piece."""
        url = self.url + _PATHS[route]
        body = _body(route, model, messages, params)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.client.connect_timeout,
                                        sock_read=self.client.stream_read_timeout)
        try:
            async with self.client._http().post(url, json=body, timeout=timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    text = raw[:500].decode("utf-8", "replace").lower()
                    if any(marker in text for marker in _REFUSES_SYSTEM) and \
                            any(m["role"] == "system" for m in messages):
                        raise SystemRefused(raw[:300].decode("utf-8", "replace").strip())
                    if resp.status in (404, 405, 501) or resp.status >= 500:
                        raise RouteFailed(f"HTTP {resp.status}")
                    raise _error_from_response(resp.status, raw, url, resp.headers)
                if route == "oneshot":
                    async for item in _oneshot(await resp.read()):
                        yield item
                    return
                async for item in _STREAM_PARSERS[route](_lines(resp)):
                    yield item
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise errors.BridgeUnavailable(f"stock stream broken: {exc!r}", url=url) from exc


def _body(route: str, model: str, messages: List[Dict[str, Any]], params: GenerationParams) -> Dict[str, Any]:
    p = params.to_json()
    if route == "openai":
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}}
        # top_k and repeat_penalty are not OpenAI's, but rkllama and the bridge read them there too.
        names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
                 "top_k": "top_k", "repeat_penalty": "repeat_penalty"}
        body.update({names[k]: v for k, v in p.items() if k in names})
        return body
    if route == "ollama":
        names = {"max_new_tokens": "num_predict", "temperature": "temperature", "top_p": "top_p",
                 "top_k": "top_k", "repeat_penalty": "repeat_penalty", "seed": "seed"}
        return {"model": model, "messages": messages, "stream": True,
                "options": {names[k]: v for k, v in p.items() if k in names}}
    return {**p, "model": model, "messages": messages, "stream": route == "generate"}


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    while True:
        line = await resp.content.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield line


def _json(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _openai(lines: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    finish: Optional[str] = None
    async for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        data = _json(payload)
        if data is None:
            continue
        usage = data.get("usage")
        for choice in data.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield _Piece(str(content))
            finish = choice.get("finish_reason") or finish
        if isinstance(usage, dict) and usage:
            yield _Final(finish or "stop", usage.get("prompt_tokens"), usage.get("completion_tokens"),
                         usage.get("tokens_per_second"))
            return
    if finish is not None:
        yield _Final(finish)


async def _ollama(lines: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for line in lines:
        data = _json(line)
        if data is None:
            continue
        content = (data.get("message") or {}).get("content")
        if content:
            yield _Piece(str(content))
        if data.get("done"):
            eval_ns = data.get("eval_duration") or 0
            count = data.get("eval_count")
            tps = round(count / (eval_ns / 1e9), 2) if count and eval_ns else None
            yield _Final(str(data.get("done_reason") or "stop"), data.get("prompt_eval_count"), count, tps)
            return


async def _generate(lines: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for line in lines:
        data = _json(line)
        if data is None:
            continue
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        content = choice.get("content")
        if content is None:
            content = (choice.get("message") or {}).get("content")
        if content:
            yield _Piece(str(content))
        if choice.get("finish_reason"):
            usage = data.get("usage") or {}
            yield _Final(str(choice["finish_reason"]), usage.get("prompt_tokens"), usage.get("completion_tokens"),
                         usage.get("tokens_per_second"))
            return


async def _oneshot(raw: bytes) -> AsyncIterator[Any]:
    data = _json(raw)
    try:
        choice = data["choices"][0]  # type: ignore[index]
        content = choice.get("content")
        if content is None:
            content = (choice.get("message") or {}).get("content", "")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise errors.BridgeProtocolError(f"unexpected /generate answer: {raw[:300]!r}") from None
    if content:
        yield _Piece(str(content))
    usage = data.get("usage") or {}  # type: ignore[union-attr]
    yield _Final(str(choice.get("finish_reason") or "stop"), usage.get("prompt_tokens"),
                 usage.get("completion_tokens"), usage.get("tokens_per_second"))


_STREAM_PARSERS = {"openai": _openai, "ollama": _ollama, "generate": _generate}


__all__ = ["ROUTES", "MERGE_MODES", "StockServer", "merge_system", "parse_routes"]
