"""An aiohttp client for one bridge: JSON calls, the native NDJSON token stream, the one-shot route.

One ``aiohttp.ClientSession`` per client, opened on first use inside the running loop and closed by
``close()``. Failures raise the classes of ``exo_rk.errors``; nothing here returns error strings.

``GenerationBackend`` is the small surface the engine uses. ``BridgeClient`` implements it for one bridge;
a pool of bridges implements the same protocol, so the engine never knows how many bridges serve it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import aiohttp

from exo_rk import errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; ``None`` means "the model's Modelfile default"."""

    max_new_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    seed: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. ``text`` may be empty while a multi-byte character is incomplete."""

    token_id: int
    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream. ``finish_reason`` is ``stop``, ``length``, ``abort`` or ``error``."""

    finish_reason: str
    usage: Dict[str, int] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    error: Optional[Dict[str, str]] = None


StreamEvent = Union[TokenEvent, StreamEnd]


@dataclass(frozen=True)
class ModelInfo:
    """What the bridge says about a model (``GET /v1/models/<name>``)."""

    id: str
    num_ctx: Optional[int] = None
    hf_repo: Optional[str] = None
    eos_token_ids: Tuple[int, ...] = ()
    defaults: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ModelInfo":
        if not isinstance(data, dict) or "id" not in data:
            raise errors.BridgeProtocolError(f"model info without an id: {data!r:.200}")
        return cls(
            id=str(data["id"]),
            num_ctx=data.get("num_ctx"),
            hf_repo=data.get("hf_repo"),
            eos_token_ids=tuple(int(t) for t in data.get("eos_token_ids") or ()),
            defaults=dict(data.get("defaults") or {}),
        )


@dataclass(frozen=True)
class OneShotReply:
    """The whole answer of a one-shot ``POST /generate``."""

    content: str
    finish_reason: str = "stop"
    usage: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddingsReply:
    """A bridge's embeddings: one vector per input, and the prompt tokens they took."""

    vectors: List[List[float]]
    prompt_tokens: int


class GenerationBackend(Protocol):
    """What the engine needs from "the bridges". Implemented by ``BridgeClient`` and by a pool."""

    async def ensure_model(self, model: str) -> ModelInfo: ...

    async def model_info(self, model: str) -> ModelInfo: ...

    async def list_models(self) -> List[str]: ...

    async def has_native_stream(self) -> bool: ...

    def stream(
        self, model: str, prompt_token_ids: Sequence[int], params: GenerationParams, *,
        images: Optional[Dict[str, Any]] = None,
    ) -> AsyncIterator[StreamEvent]: ...

    async def generate_oneshot(self, model: str, messages: Sequence[Dict[str, Any]],
                               params: Optional[GenerationParams] = None) -> OneShotReply: ...

    async def tokenizer_files(self, model: str) -> Tuple[List[str], Optional[str]]: ...

    async def tokenizer_file(self, model: str, name: str) -> bytes: ...

    async def embed(self, model: str, texts: Sequence[str]) -> EmbeddingsReply: ...

    async def close(self) -> None: ...


_STATUS_ERRORS = {
    400: errors.BadBridgeRequest,
    401: errors.BridgeAuthError,
    403: errors.BridgeAuthError,
    404: errors.ModelNotFound,
    413: errors.BadBridgeRequest,
    422: errors.BadBridgeRequest,
    429: errors.BridgeBusy,
}


def _error_from_response(status: int, body: bytes, url: str, headers: Any) -> errors.BridgeError:
    """Build the matching exception from an error response (JSON ``{"error": {...}}`` or anything)."""
    code, message = None, body[:300].decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        payload = json.loads(body)
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            code, message = err.get("code"), err.get("message") or message
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    cls = _STATUS_ERRORS.get(status, errors.BridgeUnavailable if status >= 500 else errors.BridgeError)
    kw = dict(status=status, code=code, url=url)
    if cls is errors.BridgeBusy:
        retry = headers.get("Retry-After") if headers is not None else None
        try:
            kw["retry_after"] = float(retry) if retry is not None else None
        except ValueError:
            kw["retry_after"] = None
    return cls(f"bridge answered {status}: {message}", **kw)


class BridgeClient:
    """Client of the bridge at ``base_url`` (``http://host:port``). Safe to share between tasks."""

    def __init__(
        self,
        base_url: str,
        *,
        token: Optional[str] = None,
        connect_timeout: float = 5.0,
        call_timeout: float = 30.0,
        load_timeout: float = 600.0,
        stream_read_timeout: float = 300.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.load_timeout = load_timeout
        self.stream_read_timeout = stream_read_timeout
        self._session: Optional[aiohttp.ClientSession] = None
        self._native: Optional[bool] = None
        self._info: Dict[str, ModelInfo] = {}

    def __repr__(self) -> str:
        return f"BridgeClient({self.base_url!r})"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            # No limit per host: a long token stream must never block a health check or a second stream.
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; the client reopens one if used again."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "BridgeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, connect=self.connect_timeout)

    async def _call(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        """One JSON request; returns the decoded JSON or raises a ``BridgeError``."""
        url = self.base_url + path
        try:
            async with self._http().request(
                method, url, json=body, timeout=self._timeout(timeout or self.call_timeout)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error_from_response(resp.status, raw, url, resp.headers)
                return raw if resp.content_type not in ("application/json",) else json.loads(raw)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise errors.BridgeUnavailable(f"bridge unreachable: {exc!r}", url=url) from exc

    async def health(self) -> Dict[str, Any]:
        """``GET /health`` as a dict (status, runtime, models with instances/busy/queued, queue_max)."""
        return await self._call("GET", "/health")

    async def list_models(self) -> List[str]:
        data = await self._call("GET", "/v1/models")
        return [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]

    async def model_info(self, model: str) -> ModelInfo:
        """``GET /v1/models/<name>``, cached per model for the client's life."""
        if model not in self._info:
            self._info[model] = ModelInfo.from_json(await self._call("GET", f"/v1/models/{model}"))
        return self._info[model]

    async def load_model(self, model: str) -> None:
        await self._call("POST", "/load_model", {"model_name": model}, timeout=self.load_timeout)

    async def unload_model(self, model: str) -> None:
        await self._call("POST", "/unload_model", {"model_name": model})

    async def ensure_model(self, model: str) -> ModelInfo:
        """Load ``model`` on the bridge (a no-op when it is loaded) and return its info."""
        await self.load_model(model)
        return await self.model_info(model)

    async def tokenize(
        self, model: str, text: Optional[str] = None, messages: Optional[Sequence[Dict[str, Any]]] = None
    ) -> List[int]:
        body: Dict[str, Any] = {"model": model}
        if messages is not None:
            body.update(messages=list(messages), add_generation_prompt=True)
        else:
            body["text"] = text or ""
        return list((await self._call("POST", "/v1/tokenize", body))["token_ids"])

    async def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        return (await self._call("POST", "/v1/detokenize", {"model": model, "token_ids": list(token_ids)}))[
            "text"
        ]

    async def tokenizer_files(self, model: str) -> Tuple[List[str], Optional[str]]:
        data = await self._call("GET", f"/v1/models/{model}/tokenizer")
        return [str(f) for f in data.get("files", [])], data.get("hf_repo")

    async def tokenizer_file(self, model: str, name: str) -> bytes:
        raw = await self._call("GET", f"/v1/models/{model}/tokenizer/{name}")
        return raw if isinstance(raw, bytes) else json.dumps(raw).encode()

    async def embed(self, model: str, texts: Sequence[str]) -> EmbeddingsReply:
        """``POST /v1/embeddings`` of ``texts``. ``EmbeddingsUnsupported`` when the server's runtime gives
        no hidden states (501) or the server has no such route (a 404/405 without a JSON error)."""
        try:
            data = await self._call("POST", "/v1/embeddings", {"model": model, "input": list(texts)},
                                    timeout=self.stream_read_timeout)
        except errors.BridgeError as exc:
            if exc.status == 501:
                raise errors.EmbeddingsUnsupported(exc.message, status=501, code=exc.code, url=exc.url) from None
            if exc.status in (404, 405) and exc.code is None:
                raise errors.EmbeddingsUnsupported("the server has no /v1/embeddings route (a stock rkllama "
                                                   "of the original API?)", status=exc.status, url=exc.url) from None
            raise
        try:
            items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
            tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise errors.BridgeProtocolError(f"unexpected /v1/embeddings answer: {data!r:.300}",
                                             url=self.base_url) from None
        if len(vectors) == 1 < len(texts) and vectors[0] and len(vectors[0]) % len(texts) == 0:
            # rkllama 0.0.74's OpenAI route concatenates the vectors of all inputs into one item.
            size = len(vectors[0]) // len(texts)
            log.info("%s: one concatenated vector for %d inputs (rkllama's /v1/embeddings); split in %d-float "
                     "vectors", self.base_url, len(texts), size)
            vectors = [vectors[0][i * size:(i + 1) * size] for i in range(len(texts))]
        if len(vectors) != len(texts):
            raise errors.BridgeProtocolError(f"/v1/embeddings answered {len(vectors)} vectors for {len(texts)} "
                                             "inputs", url=self.base_url)
        return EmbeddingsReply(vectors, tokens)

    async def has_native_stream(self) -> bool:
        """True when the server speaks ``POST /v1/generate`` (a bridge); False for a stock rkllama.

        Probed once with an empty body: a bridge refuses it with its JSON error, a server without the
        route answers 404/405 without one.
        """
        if self._native is None:
            url = self.base_url + "/v1/generate"
            try:
                async with self._http().post(url, json={}, timeout=self._timeout(self.call_timeout)) as resp:
                    raw = await resp.read()
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                raise errors.BridgeUnavailable(f"bridge unreachable: {exc!r}", url=url) from exc
            err = _error_from_response(resp.status, raw, url, resp.headers)
            self._native = not (resp.status in (404, 405) and err.code is None)
            log.info(
                "%s: %s",
                self.base_url,
                "native token stream"
                if self._native
                else "no native stream (stock rkllama?), one-shot token-caching mode",
            )
        return self._native

    async def stream(
        self, model: str, prompt_token_ids: Sequence[int], params: GenerationParams, *,
        images: Optional[Dict[str, Any]] = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream tokens for ``prompt_token_ids``: ``TokenEvent``s then one ``StreamEnd``. ``images``
        (``{"images": [base64, ...], "image_positions": [index, ...]}``) go with the ids to a vision model.

        Raises a ``BridgeError`` before the first event when the bridge refuses the request, and
        ``BridgeUnavailable`` when the connection breaks or ends without the final line. Closing the
        iterator early closes the connection, which makes the bridge abort the generation.
        """
        url = self.base_url + "/v1/generate"
        body = {"model": model, "prompt_token_ids": [int(t) for t in prompt_token_ids], **params.to_json(),
                **(images or {})}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout, sock_read=self.stream_read_timeout
        )
        try:
            async with self._http().post(url, json=body, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _error_from_response(resp.status, await resp.read(), url, resp.headers)
                while True:
                    line = await resp.content.readline()
                    if not line:
                        raise errors.BridgeUnavailable("stream ended without its final line", url=url)
                    event = _parse_stream_line(line, url)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, StreamEnd):
                        return
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise errors.BridgeUnavailable(f"stream broken: {exc!r}", url=url) from exc

    async def generate_oneshot(self, model: str, messages: Sequence[Dict[str, Any]],
                               params: Optional[GenerationParams] = None) -> OneShotReply:
        """rkllama's ``POST /generate`` with ``stream: false``: the whole answer at once. The sampling
        parameters travel as the native stream's fields (a bridge honours them; stock rkllama ignores
        fields it does not know and uses its Modelfile)."""
        body = {**(params.to_json() if params else {}), "model": model, "messages": list(messages),
                "stream": False}
        data = await self._call("POST", "/generate", body, timeout=self.stream_read_timeout)
        if isinstance(data, (bytes, bytearray)):
            data = json.loads(data)
        try:
            choice = data["choices"][0]
            content = choice.get("content")
            if content is None:
                content = (choice.get("message") or {}).get("content", "")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise errors.BridgeProtocolError(f"unexpected /generate answer: {data!r:.300}") from None
        return OneShotReply(
            content=str(content),
            finish_reason=choice.get("finish_reason") or "stop",
            usage=dict(data.get("usage") or {}),
        )


def _parse_stream_line(line: bytes, url: str) -> Optional[StreamEvent]:
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        raise errors.BridgeProtocolError(f"not an NDJSON line: {line[:120]!r}", url=url) from None
    if data.get("done"):
        return StreamEnd(
            finish_reason=str(data.get("finish_reason") or "stop"),
            usage=dict(data.get("usage") or {}),
            timings=dict(data.get("timings") or {}),
            error=data.get("error"),
        )
    if "token_id" not in data:
        raise errors.BridgeProtocolError(f"stream line without token_id: {line[:120]!r}", url=url)
    return TokenEvent(token_id=int(data["token_id"]), text=str(data.get("text", "")))
