"""The bridge's core, independent of HTTP: which models are loaded, and running one generation as a
stream of token events with queueing, abort on disconnect and timings. Routes only translate shapes.

Lifecycle: a model loads on first use; after its last request it stays loaded for its ``keep_alive``
(Ollama semantics, see ``lifecycle``) and is then unloaded by a reaper thread; a load that would go
over ``max_memory_mb`` first unloads the least recently used idle models (never one that serves);
the set of loaded models is kept in a state file and loaded again by ``restore()`` after a restart.
Each handle keeps its KV cache between requests (``prefix_reuse``): see ``runtimes.base``."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from rk_common.chat_images import ImageLimits

from .arbiter import NpuArbiter, NpuWaitAbandoned
from .context import check_truncate, reply_room, truncate_left
from .errors import BadRequest, BridgeError, ContextOverflow, ModelUnavailable
from .image_prompts import ImagePrompts, has_images
from .lifecycle import DEFAULT_KEEP_ALIVE_S, StateFile, describe_keep_alive, parse_keep_alive, weights_size_mb
from .metrics import BridgeMetrics
from .model_lifecycle import KeepAlive, LoadPlan, ModelLifecycle
from .params import generation_params
from .runtimes.base import (
    SAMPLING_FIELDS,
    EmbeddingsUnsupported,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    ImagePrompt,
    ModelHandle,
    ModelLoadError,
    ModelSpec,
    Runtime,
    prompt_key,
)
from .scheduler import HandleQueue
from .store import ModelStore, StoredModel
from .tokenizer import IncrementalDetokenizer

log = logging.getLogger(__name__)

ClientGoneCheck = Callable[[], bool]


@dataclass
class TokenEvent:
    token_id: int
    text: str


@dataclass
class DoneEvent:
    finish_reason: str  # stop | length | abort | error
    usage: dict
    timings: dict
    error: Optional[dict] = None


Event = Union[TokenEvent, DoneEvent]


@dataclass
class LoadedModel:
    stored: StoredModel
    queue: HandleQueue
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0  # how long loading took
    ready_at: float = field(default_factory=time.monotonic)  # when loading ended (monotonic clock)
    last_used: float = field(default_factory=time.time)
    keep_alive_s: Optional[float] = DEFAULT_KEEP_ALIVE_S  # None: forever
    serving: int = 0  # requests admitted (holding or waiting for a handle); changed by ModelLifecycle only

    @property
    def expires_at(self) -> Optional[float]:
        """When the reaper unloads this model if nothing else comes (wall clock), None = never. While it
        serves, counted from now, as Ollama shows it."""
        if self.keep_alive_s is None:
            return None
        return (time.time() if self.serving else self.last_used) + self.keep_alive_s

    @property
    def name(self) -> str:
        return self.stored.name

    @property
    def memory_mb(self) -> float:
        return sum(h.memory_mb for h in self.queue.handles)


@dataclass(frozen=True)
class ServiceOptions:
    queue_max: int = 8
    instances: int = 1
    record_prompts: Optional[Path] = None
    default_model: Optional[str] = None
    prefix_reuse: bool = True  # keep each handle's KV cache across turns
    keep_alive_s: Optional[float] = DEFAULT_KEEP_ALIVE_S  # default keep_alive; None = forever
    max_memory_mb: Optional[float] = None  # evict idle models to stay under this; None = no limit
    state_file: Optional[Path] = None  # where the set of loaded models is kept for restore()
    npu_concurrent: bool = False  # let LLM and image work use the NPU at the same time (see arbiter)
    request_timeout_s: Optional[float] = None  # deadline of a request, queue included; None = none
    image_limits: ImageLimits = field(default_factory=ImageLimits)  # images per chat request


REAPER_MAX_SLEEP_S = 0.5
# A prompt longer than NUM_CTX x this many characters cannot fit: it is refused before tokenizing, since
# templating and tokenizing a megabyte costs seconds of CPU and ~90 MB of peak memory for nothing. A token
# of the models served here covers ~4 characters on average and rarely more than 16.
MAX_CHARS_PER_TOKEN = 16


def _with_system(stored: StoredModel, messages: Sequence[dict]) -> List[dict]:
    """The conversation with the Modelfile's SYSTEM prompt first, unless it brings a system message."""
    messages = list(messages)
    if stored.system_prompt and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": stored.system_prompt})
    return messages


def _chars(messages: Sequence[dict]) -> int:
    return sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0 for m in messages)


class BridgeService:
    def __init__(self, store: ModelStore, runtime: Runtime, options: ServiceOptions,
                 metrics: Optional[BridgeMetrics] = None):
        self.store = store
        self.runtime = runtime
        self.options = options
        self.metrics = metrics or BridgeMetrics()
        self.metrics.bind(self)
        self._record_lock = threading.Lock()
        self._reaper_lock = threading.Lock()
        self._state_lock = threading.Lock()  # one state file write at a time
        self.lifecycle = ModelLifecycle(self._plan_load, options.max_memory_mb, on_change=self._lifecycle_changed,
                                        on_release=self._reaper_wake_set)
        self._current: Optional[str] = None
        self._state = StateFile(options.state_file) if options.state_file else None
        self._closing = False
        #: stopping: new requests get 503; ``cut``: the running ones were ended (finish "shutdown")
        self.draining = False
        self.cut = False
        self.restoring = False
        self._open_lock = threading.Lock()
        self._open = 0  # requests between start() and the release of their handle, queued ones included
        self._generations: set = set()
        self._reaper_wake = threading.Event()
        self._reaper: Optional[threading.Thread] = None
        #: the process's NPU arbiter: image routes take ``arbiter.turn("image")`` per step
        self.arbiter = NpuArbiter(concurrent=options.npu_concurrent)
        self.arbiter.register_metrics(self.metrics.registry)
        #: images in chat: vision encoders per model (an RKNN encoder takes the arbiter's "vision" turn)
        self.images = ImagePrompts(runtime, options.image_limits, lambda: self.arbiter.turn("vision"))

    # -- model lifecycle (owned by ``self.lifecycle``) ------------------------------------------------

    def model_spec(self, stored: StoredModel) -> ModelSpec:
        return ModelSpec(name=stored.name, directory=stored.directory,
                         weights=self.runtime.weights_for(stored.directory, stored.modelfile.get("FROM")),
                         num_ctx=stored.num_ctx, eos_token_ids=tuple(stored.tokenizer.eos_token_ids),
                         vocab_size=stored.tokenizer.vocab_size, options=dict(stored.modelfile.raw))

    def _plan_load(self, name: str, instances: Optional[int]) -> LoadPlan:
        """What loading ``name`` takes; raises 400/404 for a bad or unknown name before any state exists."""
        stored = self.store.get(name)
        spec = self.model_spec(stored)
        count = instances or int(stored.modelfile.get("INSTANCES", self.options.instances))
        return LoadPlan(count * self.estimate_mb(spec), lambda: self._create(stored, spec, count))

    def load(self, name: str, keep_alive_s: KeepAlive = "default", instances: Optional[int] = None) -> LoadedModel:
        """Load ``name`` if it is not loaded yet (concurrent callers wait for the same load). A given
        ``keep_alive_s`` (seconds, None = forever) replaces the model's, as an Ollama request does."""
        entry = self.lifecycle.use(name, keep_alive_s, instances)
        self._current = name
        self._start_reaper()
        self.lifecycle.done(entry)
        return entry

    def _create(self, stored: StoredModel, spec: ModelSpec, count: int) -> LoadedModel:
        started = time.monotonic()
        handles: List[ModelHandle] = []
        try:
            for _ in range(count):
                handles.append(self.runtime.load(spec))
        except ModelLoadError as exc:
            for h in handles:
                h.close()
            raise ModelUnavailable(str(exc), code="model_load_failed") from None
        took = time.monotonic() - started
        log.info("loaded %s (%d instance%s) on %s in %.2f s", stored.name, count, "s" * (count > 1),
                 self.runtime.name, took)
        return LoadedModel(stored=stored, queue=HandleQueue(handles, self.options.queue_max),
                           keep_alive_s=self.options.keep_alive_s, load_seconds=took)

    def estimate_mb(self, spec: ModelSpec) -> float:
        """Memory one instance of ``spec`` will take, known before loading it."""
        estimate = getattr(self.runtime, "estimate_mb", None)
        return float(estimate(spec)) if callable(estimate) else weights_size_mb(spec.weights)

    def unload(self, name: str, timeout: float = 60.0) -> bool:
        return self.lifecycle.unload(name, timeout)

    def close(self) -> None:
        self._closing = True  # the state file keeps what was loaded, for the next start
        self._reaper_wake.set()
        for name in self.lifecycle.names():
            self.unload(name, timeout=5.0)
        self.images.close()

    def delete_model(self, name: str) -> None:
        """Remove ``name``'s directory from the store, unloading it first; ``ModelNotFound`` if absent."""
        stored = self.store.get(name)
        if any(e.name == stored.name for e in self.loaded()):
            self.unload(stored.name)
        shutil.rmtree(stored.directory)
        log.info("model %s deleted from %s", stored.name, self.store.root)

    def loaded(self) -> List[LoadedModel]:
        return self.lifecycle.loaded()

    def lifecycle_view(self) -> List[dict]:
        """Per model with handles: state, keep_alive and when it expires (for /health)."""
        out = []
        for state, e in self.lifecycle.entries():
            expires = e.expires_at
            out.append({"name": e.name, "state": state, "keep_alive": describe_keep_alive(e.keep_alive_s),
                        "expires_at": None if expires is None else round(expires, 3), "serving": e.serving,
                        "memory_mb": round(e.memory_mb, 1), "last_used": e.last_used})
        return out

    def memory_view(self) -> dict:
        """Memory counted for eviction, and the handles it counts (for /health)."""
        return {"accounted_mb": round(self.lifecycle.accounted_mb(), 1), "limit_mb": self.options.max_memory_mb,
                "tracked_models": self.lifecycle.slot_count()}

    # -- keep_alive, state file, restore --------------------------------------------------------------

    def _lifecycle_changed(self) -> None:
        self._save_state()
        self._reaper_wake.set()

    def _save_state(self) -> None:
        if self._state is None or self._closing:
            return
        with self._state_lock:
            self._state.write([{"name": e.name, "instances": len(e.queue.handles),
                                "keep_alive_s": e.keep_alive_s} for e in self.loaded()])

    def restore(self, background: bool = True) -> List[str]:
        """Load again the models the state file lists (in a thread by default). Returns their names."""
        if self._state is None:
            return []
        wanted = self._state.read()  # entries already validated: bad ones are dropped with a log line
        names = [m["name"] for m in wanted]
        if names:
            log.info("restoring %d model(s) loaded before the restart: %s", len(names), ", ".join(names))

        def run():
            try:
                for item in wanted:
                    try:
                        self.load(item["name"], item["keep_alive_s"], instances=item["instances"])
                    except BridgeError as exc:
                        log.warning("could not restore %s: %s", item["name"], exc.message)
            finally:
                self.restoring = False
        self.restoring = bool(wanted)
        if background:
            threading.Thread(target=run, name="restore-models", daemon=True).start()
        else:
            run()
        return names

    def _start_reaper(self) -> None:
        with self._reaper_lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_forever, name="keep-alive-reaper", daemon=True)
                self._reaper.start()

    def _reap_forever(self) -> None:
        while not self._closing:
            self._reaper_wake.wait(self.reap_once())
            self._reaper_wake.clear()

    def reap_once(self) -> float:
        """Unload the idle models whose keep_alive ran out; returns how long to sleep until the next."""
        return max(0.01, min(REAPER_MAX_SLEEP_S, self.lifecycle.expire(time.time())))

    def _reaper_wake_set(self) -> None:
        self._reaper_wake.set()

    @property
    def current_model(self) -> Optional[str]:
        """The model last loaded or used, while it is loaded; else the last loaded one still loaded."""
        names = [e.name for e in self.loaded()]
        if self._current in names:
            return self._current
        return names[-1] if names else None

    def resolve_model(self, name: Optional[str]) -> str:
        """The model a request means: the one it names, else the current one, else the default/only one."""
        if name:
            return name
        current = self.current_model
        if current:
            return current
        if self.options.default_model:
            return self.options.default_model
        names = self.store.names()
        if len(names) == 1:
            return names[0]
        raise BadRequest("no model given and none loaded: pass 'model'", code="model_required")

    # -- prompts --------------------------------------------------------------------------------------

    def chat_prompt_ids(self, stored: StoredModel, messages: Sequence[dict], **template_extra) -> List[int]:
        """The token ids of the conversation as the model's chat template writes it. The Modelfile's
        SYSTEM prompt is used only when the conversation brings no system message of its own. A
        conversation with more characters than the context can hold is refused before templating."""
        messages = _with_system(stored, messages)
        self._check_chars(stored, _chars(messages))
        return self._encode_chat(stored, messages, **template_extra)

    def _bounded_chat_ids(self, stored: StoredModel, messages: Sequence[dict], **template_extra) -> Optional[List[int]]:
        """The conversation's ids, or None when it has too many characters to fit (nothing tokenized)."""
        messages = _with_system(stored, messages)
        if _chars(messages) > self.prompt_char_limit(stored):
            return None
        return self._encode_chat(stored, messages, **template_extra)

    @staticmethod
    def _encode_chat(stored: StoredModel, messages: List[dict], **template_extra) -> List[int]:
        try:
            return stored.tokenizer.encode_chat(messages, **template_extra)
        except ValueError as exc:
            raise BadRequest(str(exc), code="invalid_messages") from None

    def encode_text(self, stored: StoredModel, text: str) -> List[int]:
        """``text`` as token ids, refused (400) before tokenizing when it cannot fit the context."""
        self._check_chars(stored, len(text))
        return stored.tokenizer.encode(text)

    def prompt_char_limit(self, stored: StoredModel) -> int:
        """The most characters of prompt tokenized for ``stored``: more cannot fit its context."""
        return stored.num_ctx * MAX_CHARS_PER_TOKEN

    def _check_chars(self, stored: StoredModel, chars: int) -> None:
        limit = self.prompt_char_limit(stored)
        if chars > limit:
            raise ContextOverflow(
                f"prompt of {chars} characters cannot fit the context of {stored.num_ctx} tokens (NUM_CTX) of model "
                f"{stored.name}: at most {limit} characters are tokenized; shorten the conversation or send "
                "\"truncate\": \"left\"")

    def fitted_prompt_ids(self, stored: StoredModel, messages: Sequence[dict], fields: dict,
                          truncate: Optional[str] = None, **template_extra) -> Tuple[List[int], int]:
        """The conversation's ids and how many messages were dropped to fit, under ``truncate``:
        see ``context.TRUNCATE_POLICIES``. Without a policy nothing is dropped (an overflow is a 400)."""
        policy = check_truncate(truncate)

        if policy == "none":
            return self.chat_prompt_ids(stored, messages, **template_extra), 0

        def encode(msgs):  # None: too many characters to be worth tokenizing (a turn more must go)
            return self._bounded_chat_ids(stored, msgs, **template_extra)

        budget = stored.num_ctx - reply_room(fields, stored)
        return truncate_left(list(messages), encode, budget)

    def unhonoured_params(self, fields: dict) -> List[str]:
        """The sampling fields a request sets that this runtime cannot honour per request (they come from
        the Modelfile instead). A ``seed`` it cannot honour is refused: the request asks for a repeatable
        answer the runtime cannot give."""
        honoured = self.runtime.per_request_params()
        ignored = sorted(k for k, v in fields.items() if v is not None and k in SAMPLING_FIELDS and k not in honoured)
        if "seed" in ignored:
            raise BadRequest(f"the {self.runtime.name} runtime ({self.runtime.label}) cannot seed a generation: "
                             "leave out 'seed'", code="unsupported_parameter")
        return ignored

    def params_for(self, stored: StoredModel, fields: dict, prompt_len: int,
                   image_tokens: int = 0) -> GenerationParams:
        """Validated parameters. An explicit max_new_tokens that does not fit the context is a 400; the
        Modelfile's default is shortened to what fits instead."""
        explicit = fields.get("max_new_tokens") is not None
        self.unhonoured_params(fields)  # refuses a seed the runtime cannot honour, on every route
        params = generation_params(fields, stored.modelfile.values, stored.num_ctx)
        room = stored.num_ctx - prompt_len
        if room < 1 or (explicit and params.max_new_tokens > room):
            raise ContextOverflow(
                f"prompt of {prompt_len} tokens{_image_note(image_tokens)} + max_new_tokens {params.max_new_tokens} = "
                f"{prompt_len + params.max_new_tokens} exceeds the context of {stored.num_ctx} tokens (NUM_CTX) "
                f"of model {stored.name}; " + ("send fewer images or a shorter conversation" if image_tokens else
                                               "shorten the conversation or send \"truncate\": \"left\""))
        if params.max_new_tokens > room:
            params = GenerationParams(**{**params.__dict__, "max_new_tokens": room})
        return params

    def _record(self, name: str, prompt_ids: Sequence[int], params: GenerationParams) -> None:
        if self.options.record_prompts is None:
            return
        line = json.dumps({"model": name, "prompt_token_ids": list(prompt_ids), "time": time.time(),
                           "params": params.__dict__})
        with self._record_lock, open(self.options.record_prompts, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # -- generation -----------------------------------------------------------------------------------

    def start_chat(self, model: Optional[str], messages: Sequence[dict], fields: dict,
                   client_gone: ClientGoneCheck = lambda: False, *, truncate: Optional[str] = None,
                   keep_alive: object = None, **template_extra) -> Tuple["Generation", StoredModel]:
        """Template ``messages`` for ``model`` (dropping old turns if ``truncate`` asks), validate the
        parameters and start generating. ``keep_alive`` is the request's raw field (None = absent)."""
        keep = self.keep_alive_field(keep_alive)
        name = self.resolve_model(model)
        stored = self.load(name, keep).stored
        if has_images(messages):  # no truncation with images: an overflow is a 400
            prompt_ids, images = self.image_chat_prompt(stored, messages, **template_extra)
            params = self.params_for(stored, fields, len(prompt_ids) + images.n_image_tokens, images.n_image_tokens)
            return self.start(name, prompt_ids, params, client_gone, keep_alive=keep, images=images), stored
        prompt_ids, dropped = self.fitted_prompt_ids(stored, messages, fields, truncate, **template_extra)
        params = self.params_for(stored, fields, len(prompt_ids))
        generation = self.start(name, prompt_ids, params, client_gone, keep_alive=keep)
        generation.dropped_messages = dropped
        return generation, stored

    def image_chat_prompt(self, stored: StoredModel, messages: Sequence[dict],
                          **template_extra) -> Tuple[List[int], ImagePrompt]:
        """Token ids and images of a conversation with images (see ``image_prompts``)."""
        messages = _with_system(stored, messages)
        self._check_chars(stored, _chars(messages))

        def render(msgs: List[dict]) -> str:
            try:
                return stored.tokenizer.render_chat(msgs, **template_extra)
            except ValueError as exc:
                raise BadRequest(str(exc), code="invalid_messages") from None

        return self.images.build(stored, messages, render, stored.tokenizer.encode)

    def keep_alive_field(self, value: object) -> Union[Optional[float], str]:
        """A request's ``keep_alive`` as ``load``/``start`` take it ("default" when absent)."""
        return "default" if value is None else parse_keep_alive(value)

    def start(self, name: str, prompt_ids: Sequence[int], params: GenerationParams,
              client_gone: ClientGoneCheck = lambda: False,
              keep_alive: Union[Optional[float], str] = "default",
              images: Optional[ImagePrompt] = None) -> "Generation":
        """Queue for a handle of ``name`` and start generating. Blocks while queued; raises QueueFull
        (429) when the queue is full and ClientGone when the client leaves while queued. ``images``: the
        prompt's images (only for a model and runtime that take them, see ``image_prompts``)."""
        if not prompt_ids:
            raise BadRequest("the prompt is empty", code="empty_prompt")
        if self.draining:
            raise ModelUnavailable("the bridge is stopping; retry on another bridge", code="shutting_down",
                                   headers={"Retry-After": "1"})
        self._opened(+1)
        try:
            return self._start(name, prompt_ids, params, client_gone, keep_alive, images)
        except BaseException:
            self._opened(-1)
            raise

    def _opened(self, delta: int) -> None:
        with self._open_lock:
            self._open += delta

    def begin_drain(self) -> None:
        self.draining = True

    def readiness(self) -> str:
        """``ready``, ``loading`` (models of the state file still loading) or ``stopping``."""
        if self.draining:
            return "stopping"
        return "loading" if self.restoring else "ready"

    def open_requests(self) -> int:
        """Generation requests queued or running (what a graceful stop waits for)."""
        with self._open_lock:
            return self._open

    def end_running(self) -> None:
        """Cut every running generation (finish "shutdown") and turn the queued ones away."""
        self.cut = True
        with self._open_lock:
            running = list(self._generations)
        for generation in running:
            generation.cut()

    def _start(self, name: str, prompt_ids: Sequence[int], params: GenerationParams,
               client_gone: ClientGoneCheck, keep_alive: Union[Optional[float], str],
               images: Optional[ImagePrompt]) -> "Generation":
        received = time.monotonic()
        deadline = received + self.options.request_timeout_s if self.options.request_timeout_s else None
        entry = self.lifecycle.use(name, keep_alive)  # admitted: it cannot be unloaded under this request
        self._current = name
        self._start_reaper()
        try:
            self._check_prompt(entry.stored, prompt_ids, params, images)
            key = prompt_key(prompt_ids, images)
            handle = self._acquire(entry, _queue_deadline(_or_cut(self, client_gone), deadline), key)
        except BaseException:
            self.lifecycle.done(entry)
            raise
        entry.last_used = time.time()
        self._record(name, prompt_ids, params)
        return Generation(self, entry, handle, list(prompt_ids), params, client_gone, received, deadline, images)

    def embed(self, name: str, texts: Sequence[str], keep_alive: Union[Optional[float], str] = "default",
              client_gone: ClientGoneCheck = lambda: False) -> Tuple[List[List[float]], int]:
        """Mean-pooled last-hidden-layer vectors of ``texts`` (one handle, queued like a generation);
        returns (vectors, prompt tokens). A runtime without hidden states answers 501."""
        entry = self.lifecycle.use(name, keep_alive)
        try:
            stored = entry.stored
            prompts = [self.encode_text(stored, text) for text in texts]
            for ids in prompts:
                if not ids:
                    raise BadRequest("an input is empty", code="empty_input")
                if len(ids) > stored.num_ctx:
                    raise ContextOverflow(f"an input of {len(ids)} tokens exceeds the context of {stored.num_ctx} "
                                          f"tokens of model {stored.name}")
            handle = self._acquire(entry, client_gone, ())
            try:
                vectors = [handle.embed(ids) for ids in prompts]
            except EmbeddingsUnsupported as exc:
                raise BridgeError(f"{exc}: embeddings need the host, sim or rkllm runtime", status=501,
                                  code="embeddings_not_supported") from None
            finally:
                entry.queue.release(handle)
        finally:
            self.lifecycle.done(entry)
        entry.last_used = time.time()
        return vectors, sum(len(ids) for ids in prompts)

    def _check_prompt(self, stored: StoredModel, prompt_ids: Sequence[int], params: GenerationParams,
                      images: Optional[ImagePrompt] = None) -> None:
        vocab = stored.tokenizer.vocab_size
        bad = [i for i in prompt_ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab]
        if bad:
            raise BadRequest(f"prompt_token_ids contains {len(bad)} id(s) outside the vocabulary of {stored.name} "
                             f"(0..{vocab - 1}), e.g. {bad[0]!r}", code="invalid_token_ids")
        n = len(prompt_ids) + (images.n_image_tokens if images else 0)
        if n + params.max_new_tokens > stored.num_ctx:
            counted = _image_note(images.n_image_tokens if images else 0)
            raise ContextOverflow(f"prompt of {n} tokens{counted} + max_new_tokens {params.max_new_tokens} "
                                  f"exceeds the context of {stored.num_ctx} tokens of model {stored.name}")

    def _acquire(self, entry: LoadedModel, client_gone: ClientGoneCheck, prompt_ids: Sequence[int]) -> ModelHandle:
        self.metrics.queued(entry.name, +1)
        try:
            return entry.queue.acquire(client_gone, prompt_ids=prompt_ids if self.options.prefix_reuse else ())
        finally:
            self.metrics.queued(entry.name, -1)


def _image_note(image_tokens: int) -> str:
    return f" ({image_tokens} of them for images)" if image_tokens else ""


def _or_cut(service: BridgeService, client_gone: ClientGoneCheck) -> ClientGoneCheck:
    """A queued request leaves the queue when a stopping bridge cuts its work."""
    return lambda: service.cut or client_gone()


def _queue_deadline(client_gone: ClientGoneCheck, deadline: Optional[float]) -> ClientGoneCheck:
    """The queue's leave-now probe, which also gives up (503) once the request's deadline has passed."""
    if deadline is None:
        return client_gone

    def probe() -> bool:
        if time.monotonic() > deadline:
            raise ModelUnavailable("the request's deadline passed while it waited for the model (bridge "
                                   "--request-timeout); retry later", code="deadline_exceeded",
                                   headers={"Retry-After": "1"})
        return client_gone()

    return probe


class Generation:
    """One running generation: iterate it for events; ``close()`` (called by the WSGI server when the
    client goes away, or by a route that saw a stop string) aborts the runtime and waits for it to stop
    before the handle is given back, so nothing of this request can reach the next one."""

    def __init__(self, service: BridgeService, entry: LoadedModel, handle: ModelHandle, prompt_ids: List[int],
                 params: GenerationParams, client_gone: ClientGoneCheck, received: float,
                 deadline: Optional[float] = None, images: Optional[ImagePrompt] = None):
        self.service = service
        self.entry = entry
        self.handle = handle
        self.prompt_ids = prompt_ids
        self.images = images
        #: prompt tokens as the model counts them: the ids plus each image's tokens
        self.prompt_len = len(prompt_ids) + (images.n_image_tokens if images else 0)
        self.params = params
        self.client_gone = client_gone
        self.received = received
        self.started = time.monotonic()
        self.completion_ids: List[int] = []
        self.dropped_messages = 0  # messages left out by a truncation policy
        #: (first token, last token, end of the run) on the monotonic clock, for routes reporting durations
        self.token_times: Tuple[Optional[float], Optional[float], Optional[float]] = (None, None, None)
        self._q: "queue.Queue" = queue.Queue()
        self._released = False
        self._cancelled = False  # aborted by the bridge (client gone, stop string, close)
        self.deadline = deadline
        self._timed_out = False
        self._finished = False  # the runtime reported its result
        self._release_lock = threading.Lock()
        self._shutdown = False  # cut by a stopping bridge
        with service._open_lock:
            service._generations.add(self)
        self._worker = threading.Thread(target=self._work, name=f"gen-{entry.name}", daemon=True)
        service.metrics.active(entry.name, +1)
        self._worker.start()
        self._events = self._run()

    def cut(self) -> None:
        """End this generation because the bridge is stopping (finish "shutdown")."""
        self._shutdown = self._cancelled = True
        self.handle.abort()

    def _giving_up(self) -> bool:
        """Whether this request no longer wants the NPU: aborted, or past its deadline."""
        return self._cancelled or self.service.cut or (self.deadline is not None and time.monotonic() > self.deadline)

    def _not_started(self) -> GenerationResult:
        """The result of a request that gave up before the runtime ran it."""
        if not self._cancelled:
            self._timed_out = True  # its deadline passed while it waited for the NPU
        return GenerationResult("abort", self.prompt_len, 0)

    def _work(self) -> None:
        try:
            with self.service.arbiter.session("llm", self.deadline, self._giving_up) as npu:
                if self._giving_up():  # checked again once the NPU is ours: do not start
                    self._q.put(self._not_started())
                    return
                self.handle.npu_yield = npu.yield_point
                extra = {"images": self.images} if self.images else {}  # only vision handles take images
                try:
                    result = self.handle.generate(self.prompt_ids, self.params, self._q.put,
                                                  reuse_prefix=self.service.options.prefix_reuse, **extra)
                finally:
                    self.handle.npu_yield = None
            self._q.put(result)
        except NpuWaitAbandoned as exc:
            log.info("a %s request left the NPU queue before it started: %s", self.entry.name, exc)
            self._q.put(self._not_started())
        except GenerationFailed as exc:
            self._q.put(exc)
        except Exception as exc:  # a runtime bug must end this request visibly, not hang it
            log.exception("runtime %s failed while generating for %s", self.service.runtime.name, self.entry.name)
            self._q.put(exc)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def _run(self) -> Iterator[Event]:
        detok = IncrementalDetokenizer(self.entry.stored.tokenizer)
        first_at = last_at = None
        try:
            while True:
                self._check_deadline()
                try:
                    item = self._q.get(timeout=0.05)
                except queue.Empty:
                    if self.client_gone():
                        log.info("client of a %s request went away: aborting", self.entry.name)
                        self._cancelled = True
                        self.handle.abort()
                    continue
                if isinstance(item, int):
                    last_at = time.monotonic()
                    first_at = first_at or last_at
                    self.token_times = (first_at, last_at, None)
                    self.completion_ids.append(item)
                    yield TokenEvent(item, detok.push(item))
                    continue
                done = self._done(item, detok, first_at, last_at)
                self._finished = True
                self._release()  # before the last event: a consumer may never come back for more
                yield done
                return
        finally:
            self._release()

    def _check_deadline(self) -> None:
        if self.deadline is not None and not self._timed_out and time.monotonic() > self.deadline:
            log.warning("a %s request passed its deadline after %d tokens: aborting", self.entry.name,
                        len(self.completion_ids))
            self._timed_out = True
            self.handle.abort()

    def _done(self, item, detok: IncrementalDetokenizer, first_at, last_at) -> DoneEvent:
        n = len(self.completion_ids)
        self.token_times = (first_at, last_at, time.monotonic())
        error = None
        if isinstance(item, GenerationResult):
            # "timeout": cut by the bridge's --request-timeout (OpenAI clients see "length": a limit hit)
            reason = "timeout" if self._timed_out and item.finish_reason == "abort" else item.finish_reason
            if item.finish_reason == "abort" and (self._shutdown or self.service.cut):
                reason = "shutdown"  # cut by a stopping bridge: the reply is incomplete
        else:
            reason = "error"
            error = {"code": "runtime_error", "message": f"{self.service.runtime.name} runtime: {item}"}
            log.error("generation for %s failed after %d tokens: %s", self.entry.name, n, item)
        usage = {"prompt_tokens": self.prompt_len, "completion_tokens": n, "total_tokens": self.prompt_len + n}
        if detok.invalid_ids:
            usage["invalid_token_ids"] = detok.invalid_ids
        if isinstance(item, GenerationResult) and item.cached_tokens:
            usage["cached_tokens"] = item.cached_tokens
        timings = {
            "queue_ms": round((self.started - self.received) * 1000, 3),
            "prefill_ms": round(((first_at or time.monotonic()) - self.started) * 1000, 3),
            "ttft_ms": round(((first_at or time.monotonic()) - self.received) * 1000, 3),
            "decode_tok_s": round((n - 1) / (last_at - first_at), 3) if n > 1 and last_at > first_at else 0.0,
        }
        self.service.metrics.finished(self.entry.name, reason, n, timings)
        return DoneEvent(reason, usage, timings, error)

    def _release(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        if not self._finished:
            self._cancelled = True
            self.handle.abort()
            self.service.metrics.aborted(self.entry.name)
        self._worker.join()
        self.service.metrics.active(self.entry.name, -1)
        self.entry.queue.release(self.handle)
        self.service.lifecycle.done(self.entry)
        with self.service._open_lock:
            self.service._generations.discard(self)
            self.service._open -= 1

    def close(self) -> None:
        self._events.close()  # runs _run's finally if it started
        self._release()  # and releases if it never did

    def text(self) -> str:
        return self.entry.stored.tokenizer.decode(self.completion_ids)
