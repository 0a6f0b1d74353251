"""``RKLLMInferenceEngine``: exo's inference engine over RKLLM bridges.

exo's node calls ``infer_tensor`` once with the whole templated conversation, shape (1, N), then once per
generated token with shape (1, 1), passes each output through ``sample`` and stops at the tokenizer's
``eos_token_id`` or its own token limit. This engine sends the (1, N) token ids to the bridge's native
stream once — every turn and the system prompt exactly as exo templated them — and answers each call with
the next token as soon as the bridge produced it. It never raises after the first token: failures are
logged and end the request with EOS. Requests exo stops asking about expire (TTL and cap), and their
generation is aborted on the bridge: at exo's own token limit (``--max-generate-tokens``, handed over by the
hook) and when buffered tokens see no call for ``call_idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from exo_rk import errors
from exo_rk.backends import make_backend
from exo_rk.client import GenerationBackend, GenerationParams, ModelInfo
from exo_rk.compat import InferenceEngine, Shard, ShardDownloader
from exo_rk.model_cards import IMAGE_MODEL_IDS, ModelCard, load_cards
from exo_rk.request_state import RequestTable
from exo_rk.settings import Settings
from exo_rk.stock_pool import stock_server_for
from exo_rk.stock_routes import StockServer
from exo_rk.streaming import StreamingSession
from exo_rk.token_cache import CachedReply, messages_from_prompt, plain_messages
from exo_rk.tokenizer_store import encode_prompt, eos_token_id, load_tokenizer, sync_tokenizer

log = logging.getLogger(__name__)

# Keys of ``inference_state`` a caller may set on the first call (exo sets none; the gateway does).
STATE_PARAMS = "rkllm_params"
STATE_MESSAGES = "rkllm_messages"
#: ``{"images": [base64, ...], "image_positions": [index into the prompt ids, ...]}``: the prompt's images,
#: carried to the bridge's native stream (exo's own ChatGPT API hands the engine none, see the README)
STATE_IMAGES = "rkllm_images"


class _LoadedModel:
    def __init__(self, card: ModelCard, info: ModelInfo, tokenizer: Any, native: bool):
        self.card = card
        self.info = info
        self.tokenizer = tokenizer
        self.native = native
        self.eos = eos_token_id(tokenizer)


class RKLLMInferenceEngine(InferenceEngine):
    """exo engine for RK boards; ``RKLLMInferenceEngine(shard_downloader)`` as exo builds it."""

    def __init__(
        self,
        shard_downloader: Optional[ShardDownloader] = None,
        *,
        settings: Optional[Settings] = None,
        backend: Optional[GenerationBackend] = None,
        cards: Optional[Dict[str, ModelCard]] = None,
    ):
        self.session: Dict[str, Any] = {}  # exo's base class shares one dict between all engines otherwise
        self.shard_downloader = shard_downloader
        self.settings = settings or Settings.from_env()
        self.cards = cards if cards is not None else load_cards(self.settings.models_file)
        self._backend = backend
        self.shard: Optional[Shard] = None
        self.tokenizer: Any = None
        self._models: Dict[str, _LoadedModel] = {}
        self._load_lock = asyncio.Lock()
        self._requests: RequestTable = RequestTable(self.settings.request_ttl, self.settings.max_requests,
                                                    idle=self.settings.call_idle_timeout)
        self._conversations: Dict[str, List[Dict[str, Any]]] = {}
        self._max_tokens: Dict[str, int] = {}  # per-request limits exo's API was given (via the hook)
        self._usage: Dict[str, Dict[str, Any]] = {}  # the server's own counts of requests that ended
        self._stock: Optional[StockServer] = None
        self._sweeper: Optional[asyncio.Task] = None
        self._image_engine: Any = None
        self.exo_temperature: Optional[float] = None
        self.exo_max_tokens: Optional[int] = None  # the node's --max-generate-tokens, when known

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def backend(self) -> GenerationBackend:
        """The bridge (or pool) this engine talks to, built from the settings on first use."""
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    def card_for(self, model_id: str) -> ModelCard:
        """The model card for an exo model id; ``UnknownModel`` if none (``discover_models`` adds cards
        for bridge models that have none)."""
        card = self.cards.get(model_id)
        if card is None:
            raise errors.UnknownModel(f"no model card for {model_id!r}; known: {sorted(self.cards)}")
        return card

    def remember_messages(self, request_id: str, messages: List[Any], max_tokens: Optional[int] = None) -> None:
        """Keep what exo's API knows of a request before the engine hears of it (handed over by the hook):
        its message list (the one-shot mode sends messages, not token ids) and its ``max_tokens``."""
        self._conversations[request_id] = plain_messages(messages)
        if max_tokens is not None:
            self._max_tokens[request_id] = int(max_tokens)
        for remembered in (self._conversations, self._max_tokens):
            while len(remembered) > self.settings.max_requests:
                remembered.pop(next(iter(remembered)))

    def bind_node_defaults(self, temperature: Optional[float] = None,
                           max_generate_tokens: Optional[int] = None) -> None:
        """Take the settings of the exo node that owns this engine: its ``--default-temp`` (which exo would
        only pass to ``sample`` after the first token) and its ``--max-generate-tokens`` (where exo stops
        calling without a word, so the bridge must stop there too)."""
        if temperature is not None:
            self.exo_temperature = float(temperature)
        if max_generate_tokens is not None and max_generate_tokens > 0:
            self.exo_max_tokens = int(max_generate_tokens)

    def serves(self, model_id: str) -> bool:
        """True for the text models this engine serves through RKLLM bridges (the hook's patches apply to
        these only)."""
        return model_id in self.cards and model_id not in IMAGE_MODEL_IDS

    # -- exo's interface ----------------------------------------------------------------------------

    async def encode(self, shard: Shard, prompt: str) -> np.ndarray:
        if shard.model_id in IMAGE_MODEL_IDS:
            return await self._image().encode(shard, prompt)
        await self.ensure_shard(shard)
        return np.array(encode_prompt(self.tokenizer, prompt), dtype=np.int64)

    async def decode(self, shard: Shard, tokens: np.ndarray) -> str:
        if shard.model_id in IMAGE_MODEL_IDS:
            return await self._image().decode(shard, tokens)
        await self.ensure_shard(shard)
        return self.tokenizer.decode([int(t) for t in np.asarray(tokens).reshape(-1)])

    async def sample(
        self, x: np.ndarray, temp: Optional[float] = None, top_p: Optional[float] = None
    ) -> np.ndarray:
        """The token ``infer_tensor`` returned, as a 1-element array. The runtime already sampled it; a
        temperature exo passes here is used for the requests that start after it."""
        if temp is not None:
            self.exo_temperature = float(temp)
        return np.asarray(x, dtype=np.int64).reshape(-1)[:1]

    async def load_checkpoint(self, shard: Shard, path: str) -> None:
        await self.ensure_shard(shard)

    async def ensure_shard(self, shard: Shard) -> None:
        """Load the whole model on the bridge and its tokenizer here (into exo's downloads layout)."""
        if shard.model_id in IMAGE_MODEL_IDS:
            await self._image().ensure_shard(shard)
            self.shard = shard
            return
        if self.shard == shard and shard.model_id in self._models:
            return
        if not (shard.start_layer == 0 and shard.end_layer == shard.n_layers - 1):
            raise errors.PartialShardError(
                f"RKLLM runs whole models, but exo assigned layers {shard.start_layer}-{shard.end_layer} of "
                f"{shard.n_layers} of {shard.model_id}: run this node alone (e.g. --discovery-module manual) "
                f"and scale with more bridges (RKLLM_SERVERS) instead of more exo peers"
            )
        async with self._load_lock:
            loaded = self._models.get(shard.model_id) or await self._load(shard.model_id)
            self._models[shard.model_id] = loaded
            self.shard, self.tokenizer = shard, loaded.tokenizer

    async def _load(self, model_id: str) -> _LoadedModel:
        card = self.card_for(model_id)
        native = await self._wants_native()
        stock = None if native else self.stock_server()
        if stock is not None:
            await stock.ensure_model(card.bridge_model)
            info = await self._stock_info(card.bridge_model)
        else:
            try:
                info = await self.backend.ensure_model(card.bridge_model)
            except errors.ModelNotFound:
                if native:
                    raise
                info = ModelInfo(id=card.bridge_model)  # a stock rkllama has no model info route
        local = await sync_tokenizer(
            self.backend, card.bridge_model, card.hf_repo, self.settings.downloads_dir
        )
        tokenizer = await load_tokenizer(card.hf_repo, local)
        log.info(
            "model %s ready on %s (bridge model %s, %s mode, eos %s)",
            model_id,
            self.backend,
            card.bridge_model,
            "stream" if native else "one-shot",
            eos_token_id(tokenizer),
        )
        return _LoadedModel(card, info, tokenizer, native)

    def stock_server(self) -> Optional[StockServer]:
        """The one-shot protocol ladder over the backend: one server's, or a pool's over its servers."""
        if self._stock is None:
            self._stock = stock_server_for(self.backend, self.settings)
        return self._stock

    async def _stock_info(self, model: str) -> ModelInfo:
        """A bridge in one-shot mode still describes its model; a stock rkllama does not."""
        try:
            return await self.backend.model_info(model)
        except errors.BridgeError:
            return ModelInfo(id=model)

    async def _wants_native(self) -> bool:
        if self.settings.mode == "stream":
            return True
        if self.settings.mode == "oneshot":
            return False
        return await self.backend.has_native_stream()

    async def infer_tensor(
        self, request_id: str, shard: Shard, input_data: np.ndarray, inference_state: Optional[dict] = None
    ) -> Tuple[np.ndarray, Optional[dict]]:
        """(1, N) starts the request; each (1, 1) returns the next token; EOS once it is over."""
        if shard.model_id in IMAGE_MODEL_IDS:
            return await self._image().infer_tensor(request_id, shard, input_data, inference_state)
        await self.ensure_shard(shard)
        loaded = self._models[shard.model_id]
        self._requests.expire()
        gen = self._requests.get(request_id)
        if gen is None:
            if self._requests.was_ended(request_id):
                return self._token_array(loaded.eos), inference_state
            gen = await self._start(
                request_id, loaded, np.asarray(input_data).reshape(-1), inference_state or {}
            )
            self._requests.put(request_id, gen)
            self._ensure_sweeper()
        try:
            token = await gen.next_token()
        except errors.BridgeError:
            self._requests.finish(request_id, "error")
            raise
        if token is None:
            end = getattr(gen, "end", None)
            self._requests.finish(request_id, end.finish_reason if end is not None else gen.ended_by)
            if end is not None and end.usage:
                self._usage[request_id] = dict(end.usage)
                while len(self._usage) > self.settings.max_requests:
                    self._usage.pop(next(iter(self._usage)))
            self._conversations.pop(request_id, None)
            token = loaded.eos
        elif gen.limit is not None and gen.tokens_served >= gen.limit:
            # exo's node limit: exo stops calling after this token without a word; the API's max_tokens:
            # the next call reads EOS. Either way the bridge's work ends now.
            self._requests.finish(request_id, "length")
        return self._token_array(token), inference_state

    @staticmethod
    def _token_array(token: Optional[int]) -> np.ndarray:
        return np.array([[-1 if token is None else int(token)]], dtype=np.int64)

    async def _start(self, request_id: str, loaded: _LoadedModel, prompt_ids: np.ndarray, state: dict):
        ids = [int(t) for t in prompt_ids]
        remembered = self._conversations.pop(request_id, None)
        limits = [n for n in (self._max_tokens.pop(request_id, None), self.exo_max_tokens) if n]
        limit = min(limits) if limits else None
        params = self._params(state, self._bridge_limit(loaded, len(ids), limit))
        images = state.get(STATE_IMAGES)
        if images and not loaded.native:
            raise errors.BadBridgeRequest(f"request {request_id}: images need a bridge with the native stream; "
                                          "stock rkllama's one-shot /generate cannot carry them",
                                          code="images_unsupported")
        if loaded.native:
            log.debug("request %s: %d prompt tokens%s to %s (%s)", request_id, len(ids),
                      f" and {len(images['images'])} image(s)" if images else "", loaded.card.bridge_model, params)
            extra = {"images": images} if images else {}
            events = self.backend.stream(loaded.card.bridge_model, ids, params, **extra)
            gen = StreamingSession(request_id, events, first_token_timeout=self.settings.first_token_timeout,
                                   token_timeout=self.settings.token_timeout)
        else:
            gen = await self._start_oneshot(request_id, loaded, ids, state.get(STATE_MESSAGES) or remembered,
                                            params)
        gen.limit = limit
        return gen

    @staticmethod
    def _bridge_limit(loaded: _LoadedModel, n_prompt: int, limit: Optional[int]) -> Optional[int]:
        """``limit`` when the bridge will take it as ``max_new_tokens`` (no more than the Modelfile's default
        and within the context), so it stops there itself; else None: the bridge's own limit is then the
        smaller one (exo's default --max-generate-tokens of 10000 is more than a bridge accepts)."""
        default, num_ctx = loaded.info.defaults.get("max_new_tokens"), loaded.info.num_ctx
        if limit is None or not isinstance(default, int) or not isinstance(num_ctx, int):
            return None
        return limit if limit <= default and n_prompt + limit <= num_ctx else None

    async def _start_oneshot(self, request_id: str, loaded: _LoadedModel, ids: List[int],
                             messages: Optional[List[Any]], params: GenerationParams) -> Any:
        """The message list to the stock server's best route (``exo_rk.stock_routes``): streamed when it
        streams (one server or a pool of them); a backend without a ladder gets ``/generate`` once, the
        reply re-tokenized and cached."""
        source = "caller"
        if not messages:
            source = "prompt"
            messages = messages_from_prompt(loaded.tokenizer.decode(ids, skip_special_tokens=False))
        if not messages:
            raise errors.BridgeError(
                f"request {request_id}: one-shot mode needs the message list and the prompt is not in a chat "
                f"format this engine can read back; use a bridge with the native stream")
        log.debug("request %s: %d messages (from the %s) to %s /generate", request_id, len(messages), source,
                  loaded.card.bridge_model)
        stock = self.stock_server()
        if stock is not None:
            tokenizer = loaded.tokenizer
            events = stock.stream(loaded.card.bridge_model, plain_messages(messages), params,
                                  lambda text: encode_prompt(tokenizer, text), request_id)
            return StreamingSession(request_id, events, first_token_timeout=self.settings.first_token_timeout,
                                    token_timeout=self.settings.token_timeout)
        reply = await self.backend.generate_oneshot(loaded.card.bridge_model, plain_messages(messages), params)
        if reply.usage:
            self._usage[request_id] = {**reply.usage}
        return CachedReply(request_id, encode_prompt(loaded.tokenizer, reply.content))

    def server_usage(self, request_id: str) -> Optional[Dict[str, Any]]:
        """The token counts the server reported for a request that ended (None when it sent none)."""
        return self._usage.get(request_id)

    def _params(self, state: dict, bridge_limit: Optional[int] = None) -> GenerationParams:
        given = dict(state.get(STATE_PARAMS) or {})
        if "temperature" not in given and self.exo_temperature is not None:
            given["temperature"] = self.exo_temperature
        limits = [n for n in (given.get("max_new_tokens"), bridge_limit) if n]
        if limits:
            given["max_new_tokens"] = min(limits)
        return GenerationParams(
            **{k: v for k, v in given.items() if k in GenerationParams.__dataclass_fields__}
        )

    def abort(self, request_id: str) -> None:
        """End a request early (the gateway's stop sequences, a client that left); the bridge aborts its
        generation."""
        self._requests.finish(request_id, "abort")
        if self._image_engine is not None:
            self._image_engine.abort(request_id)

    def finish_reason(self, request_id: str) -> Optional[str]:
        """How a request that ended recently ended: the bridge's ``stop``/``length``, or ``error``, ..."""
        return self._requests.ended_reason(request_id)

    async def discover_models(self) -> List[str]:
        """Add a card for every bridge model that has none (id = bridge name); returns the servable ids."""
        stock = None if await self._wants_native() else self.stock_server()
        names = (await stock.discover()).models if stock is not None else await self.backend.list_models()
        for name in names:
            if name not in self.cards and not any(c.bridge_model == name for c in self.cards.values()):
                try:
                    info = await self.backend.model_info(name)
                except errors.BridgeError:
                    continue
                self.cards[name] = ModelCard(name, name, info.hf_repo or f"exo-rk/{name}", 1, name)
        available = set(names)
        return [mid for mid, card in self.cards.items() if card.bridge_model in available]

    def is_native(self, model_id: str) -> bool:
        """True when the model is served through the native token stream (not a one-shot server)."""
        loaded = self._models.get(model_id)
        return loaded is None or loaded.native

    def loaded_info(self, model_id: str) -> Optional[ModelInfo]:
        """What the bridge said about a model this engine loaded (None before ``ensure_shard``)."""
        loaded = self._models.get(model_id)
        return loaded.info if loaded is not None else None

    def request_ids(self) -> List[str]:
        """Ids of the requests currently held (for diagnostics and tests)."""
        return self._requests.ids()

    def request_state(self, request_id: str) -> Any:
        return self._requests.get(request_id)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="rkllm-request-sweeper")

    async def _sweep(self) -> None:
        """Evict abandoned requests even when no new call arrives to trigger it."""
        interval = min(5.0, self.settings.request_ttl / 4, self.settings.call_idle_timeout / 4)
        while len(self._requests):
            await asyncio.sleep(interval)
            self._requests.expire()

    async def cleanup(self) -> None:
        """Cancel every request and close the bridge connections."""
        self._requests.clear()
        self._conversations.clear()
        self._max_tokens.clear()
        self._usage.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._backend is not None:
            await self._backend.close()
        if self._image_engine is not None and hasattr(self._image_engine, "cleanup"):
            await self._image_engine.cleanup()

    # -- images -------------------------------------------------------------------------------------

    def _image(self) -> Any:
        """Image model ids go to the RKNN image engine, so one ``rkllm`` node serves both."""
        if self._image_engine is None:
            try:
                from exo_rk.image_engine import ImageSettings, RKNNImageInferenceEngine
            except ImportError as exc:
                raise errors.UnknownModel(f"image models need exo_rk.image_engine: {exc}") from exc
            self._image_engine = RKNNImageInferenceEngine(self.shard_downloader,
                                                          settings=ImageSettings.from_env(base=self.settings))
        return self._image_engine
