"""The bridge's core, independent of HTTP: which models are loaded, and running one generation as a
stream of token events with queueing, abort on disconnect and timings. Routes only translate shapes."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

from .errors import BadRequest, BridgeError, ContextOverflow, ModelNotFound, ModelUnavailable
from .metrics import BridgeMetrics
from .params import generation_params
from .runtimes.base import (GenerationFailed, GenerationParams, GenerationResult, ModelHandle, ModelLoadError,
                            ModelSpec, Runtime)
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
    last_used: float = field(default_factory=time.time)

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


class BridgeService:
    def __init__(self, store: ModelStore, runtime: Runtime, options: ServiceOptions,
                 metrics: Optional[BridgeMetrics] = None):
        self.store = store
        self.runtime = runtime
        self.options = options
        self.metrics = metrics or BridgeMetrics()
        self.metrics.bind(self)
        self._loaded: Dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._load_locks: Dict[str, threading.Lock] = {}
        self._record_lock = threading.Lock()
        self._current: Optional[str] = None

    # -- model lifecycle ------------------------------------------------------------------------------

    def model_spec(self, stored: StoredModel) -> ModelSpec:
        return ModelSpec(name=stored.name, directory=stored.directory,
                         weights=self.runtime.weights_for(stored.directory, stored.modelfile.get("FROM")),
                         num_ctx=stored.num_ctx, eos_token_ids=tuple(stored.tokenizer.eos_token_ids),
                         vocab_size=stored.tokenizer.vocab_size, options=dict(stored.modelfile.raw))

    def load(self, name: str) -> LoadedModel:
        """Load ``name`` if it is not loaded yet (concurrent callers wait for the same load)."""
        with self._lock:
            entry = self._loaded.get(name)
            if entry:
                self._current = name
                return entry
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
            stored = self.store.get(name)
            spec = self.model_spec(stored)
            instances = int(stored.modelfile.get("INSTANCES", self.options.instances))
            started = time.monotonic()
            handles: List[ModelHandle] = []
            try:
                for _ in range(instances):
                    handles.append(self.runtime.load(spec))
            except ModelLoadError as exc:
                for h in handles:
                    h.close()
                raise ModelUnavailable(str(exc), code="model_load_failed") from None
            entry = LoadedModel(stored=stored, queue=HandleQueue(handles, self.options.queue_max))
            log.info("loaded %s (%d instance%s) on %s in %.2f s", name, instances, "s" * (instances > 1),
                     self.runtime.name, time.monotonic() - started)
            with self._lock:
                self._loaded[name] = entry
                self._current = name
            return entry

    def unload(self, name: str, timeout: float = 60.0) -> bool:
        with self._lock:
            entry = self._loaded.pop(name, None)
            if self._current == name:
                self._current = next(reversed(self._loaded), None) if self._loaded else None
        if entry is None:
            return False
        entry.queue.retired = True
        if not entry.queue.wait_idle(timeout):
            log.warning("unloading %s while requests still run: aborting them", name)
            for h in entry.queue.handles:
                h.abort()
            entry.queue.wait_idle(timeout)
        for h in entry.queue.handles:
            h.close()
        log.info("unloaded %s", name)
        return True

    def close(self) -> None:
        for name in list(self._loaded):
            self.unload(name, timeout=5.0)

    def loaded(self) -> List[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    @property
    def current_model(self) -> Optional[str]:
        return self._current

    def resolve_model(self, name: Optional[str]) -> str:
        """The model a request means: the one it names, else the current one, else the default/only one."""
        if name:
            return name
        if self._current:
            return self._current
        if self.options.default_model:
            return self.options.default_model
        names = self.store.names()
        if len(names) == 1:
            return names[0]
        raise BadRequest("no model given and none loaded: pass 'model'", code="model_required")

    # -- prompts --------------------------------------------------------------------------------------

    def chat_prompt_ids(self, stored: StoredModel, messages: Sequence[dict], **template_extra) -> List[int]:
        """The token ids of the conversation as the model's chat template writes it. The Modelfile's
        SYSTEM prompt is used only when the conversation brings no system message of its own."""
        messages = list(messages)
        if stored.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": stored.system_prompt})
        try:
            return stored.tokenizer.encode_chat(messages, **template_extra)
        except ValueError as exc:
            raise BadRequest(str(exc), code="invalid_messages") from None

    def params_for(self, stored: StoredModel, fields: dict, prompt_len: int) -> GenerationParams:
        """Validated parameters. An explicit max_new_tokens that does not fit the context is a 400; the
        Modelfile's default is shortened to what fits instead."""
        explicit = fields.get("max_new_tokens") is not None
        params = generation_params(fields, stored.modelfile.values, stored.num_ctx)
        room = stored.num_ctx - prompt_len
        if room < 1 or (explicit and params.max_new_tokens > room):
            raise ContextOverflow(
                f"prompt of {prompt_len} tokens + max_new_tokens {params.max_new_tokens} = "
                f"{prompt_len + params.max_new_tokens} exceeds the context of {stored.num_ctx} tokens (NUM_CTX) "
                f"of model {stored.name}")
        if params.max_new_tokens > room:
            params = GenerationParams(**{**params.__dict__, "max_new_tokens": room})
        return params

    def _record(self, name: str, prompt_ids: Sequence[int]) -> None:
        if self.options.record_prompts is None:
            return
        line = json.dumps({"model": name, "prompt_token_ids": list(prompt_ids), "time": time.time()})
        with self._record_lock, open(self.options.record_prompts, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # -- generation -----------------------------------------------------------------------------------

    def start(self, name: str, prompt_ids: Sequence[int], params: GenerationParams,
              client_gone: ClientGoneCheck = lambda: False) -> "Generation":
        """Queue for a handle of ``name`` and start generating. Blocks while queued; raises QueueFull
        (429) when the queue is full and ClientGone when the client leaves while queued."""
        if not prompt_ids:
            raise BadRequest("the prompt is empty", code="empty_prompt")
        entry = self.load(name)
        stored = entry.stored
        bad = [i for i in prompt_ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < stored.tokenizer.vocab_size]
        if bad:
            raise BadRequest(f"prompt_token_ids contains {len(bad)} id(s) outside the vocabulary of {name} "
                             f"(0..{stored.tokenizer.vocab_size - 1}), e.g. {bad[0]!r}", code="invalid_token_ids")
        if len(prompt_ids) + params.max_new_tokens > stored.num_ctx:
            raise ContextOverflow(f"prompt of {len(prompt_ids)} tokens + max_new_tokens {params.max_new_tokens} "
                                  f"exceeds the context of {stored.num_ctx} tokens of model {name}")
        received = time.monotonic()
        self.metrics.queued(name, +1)
        try:
            handle = entry.queue.acquire(client_gone)
        finally:
            self.metrics.queued(name, -1)
        entry.last_used = time.time()
        self._record(name, prompt_ids)
        return Generation(self, entry, handle, list(prompt_ids), params, client_gone, received)


class Generation:
    """One running generation: iterate it for events; ``close()`` (called by the WSGI server when the
    client goes away, or by a route that saw a stop string) aborts the runtime and waits for it to stop
    before the handle is given back, so nothing of this request can reach the next one."""

    def __init__(self, service: BridgeService, entry: LoadedModel, handle: ModelHandle, prompt_ids: List[int],
                 params: GenerationParams, client_gone: ClientGoneCheck, received: float):
        self.service = service
        self.entry = entry
        self.handle = handle
        self.prompt_ids = prompt_ids
        self.params = params
        self.client_gone = client_gone
        self.received = received
        self.started = time.monotonic()
        self.completion_ids: List[int] = []
        self._q: "queue.Queue" = queue.Queue()
        self._released = False
        self._finished = False  # the runtime reported its result
        self._release_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name=f"gen-{entry.name}", daemon=True)
        service.metrics.active(entry.name, +1)
        self._worker.start()
        self._events = self._run()

    def _work(self) -> None:
        try:
            result = self.handle.generate(self.prompt_ids, self.params, self._q.put)
            self._q.put(result)
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
                try:
                    item = self._q.get(timeout=0.05)
                except queue.Empty:
                    if self.client_gone():
                        log.info("client of a %s request went away: aborting", self.entry.name)
                        self.handle.abort()
                    continue
                if isinstance(item, int):
                    last_at = time.monotonic()
                    first_at = first_at or last_at
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

    def _done(self, item, detok: IncrementalDetokenizer, first_at, last_at) -> DoneEvent:
        n = len(self.completion_ids)
        error = None
        if isinstance(item, GenerationResult):
            reason = item.finish_reason
        else:
            reason = "error"
            error = {"code": "runtime_error", "message": f"{self.service.runtime.name} runtime: {item}"}
            log.error("generation for %s failed after %d tokens: %s", self.entry.name, n, item)
        usage = {"prompt_tokens": len(self.prompt_ids), "completion_tokens": n,
                 "total_tokens": len(self.prompt_ids) + n}
        if detok.invalid_ids:
            usage["invalid_token_ids"] = detok.invalid_ids
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
            self.handle.abort()
            self.service.metrics.aborted(self.entry.name)
        self._worker.join()
        self.service.metrics.active(self.entry.name, -1)
        self.entry.queue.release(self.handle)

    def close(self) -> None:
        self._events.close()  # runs _run's finally if it started
        self._release()  # and releases if it never did

    def text(self) -> str:
        return self.entry.stored.tokenizer.decode(self.completion_ids)
