"""One native ``LLMHandle``: init, run (token ids or prompt), abort, destroy exactly once.

Threading: ``rkllm_run`` blocks, so each generation runs it on a short-lived worker thread. The
library calls back on its own thread; the ctypes callback only puts ``(kind, payload)`` events on the
run's queue and returns at once, so the runtime is never held up by the consumer. ``generate`` runs
on the caller's thread, takes events off the queue and calls ``on_token`` there (an exception from
``on_token`` aborts the run and is re-raised once the library has stopped). Each run passes its own
id as ``userdata``; callbacks carrying another id (the tail of an earlier run) are dropped.

``embed`` runs the prompt in RKLLM_INFER_GET_LAST_HIDDEN_LAYER mode: the library calls back once with the
prompt's last hidden layer (state RKLLM_RUN_GET_LAST_HIDDEN_LAYER on 1.1, RKLLM_RUN_NORMAL later), which
the callback copies before returning, and the handle mean-pools it over the tokens.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtimes.base import (
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    ImagePrompt,
    ModelHandle,
    ModelLoadError,
    ModelSpec,
    prompt_key,
    reusable_prefix,
)
from .abi_common import (
    CALLBACK_CONTINUE,
    CALLBACK_PAUSE,
    CALLBACK_RELEASE,
    RKLLM_INFER_GENERATE,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER,
    RKLLM_INPUT_MULTIMODAL,
    RKLLM_INPUT_PROMPT,
    RKLLM_INPUT_TOKEN,
    RKLLM_RUN_ERROR,
    RKLLM_RUN_FINISH,
    RKLLM_RUN_NORMAL,
    RKLLM_RUN_WAITING,
    LLMHandle,
    RKLLMLoraAdapter,
)
from .library import RKLLMLibrary
from .params import LoadSettings, fill_param, sampling_param, settings_from_spec

log = logging.getLogger(__name__)

OnText = Callable[[int, bytes], None]

# Event kinds on a run's queue.
_TOKEN, _FINISH, _ERROR, _CALLBACK_FAILED, _RETURNED = "token", "finish", "error", "callback-failed", "returned"
_HIDDEN = "hidden"

POLL_S = 0.05

# The tags RKLLM wraps around an image's tokens (rkllm.h: img_start/img_end/img_content before 1.3, the
# multimodal input's image_start/... from 1.3), from the Modelfile; the defaults are Qwen2-VL's, as in the
# rknn-llm multimodal demo.
IMAGE_TAGS = (("IMAGE_START", "<|vision_start|>"), ("IMAGE_END", "<|vision_end|>"),
              ("IMAGE_CONTENT", "<|image_pad|>"))


def image_tags(spec: ModelSpec) -> tuple:
    """(start, end, content) tags of ``spec`` as bytes."""
    return tuple(spec.options.get(key, default).encode() for key, default in IMAGE_TAGS)


@dataclass
class _Perf:
    prefill_ms: float | None = None
    decode_ms: float | None = None
    prefill_tokens: int | None = None
    memory_mb: float | None = None


@dataclass
class _Outcome:
    """What the consumer has seen of one run so far."""

    completion: int = 0
    dropped: int = 0
    finish: str | None = None
    error: str | None = None
    raised: BaseException | None = None
    eos_id: int | None = None  # the EOS token the run stopped at (it went into the KV cache)
    delivered: list = field(default_factory=list)
    perf: _Perf = field(default_factory=_Perf)
    hidden: np.ndarray | None = None  # num_tokens x embd_size, of a RKLLM_INFER_GET_LAST_HIDDEN_LAYER run


class _Run:
    """One rkllm_run in flight."""

    def __init__(self, run_id: int, limit: int, eos: frozenset, hidden: bool = False):
        self.id = run_id
        self.limit = limit
        self.eos = eos
        self.hidden = hidden  # a RKLLM_INFER_GET_LAST_HIDDEN_LAYER run: its callbacks carry hidden states
        self.events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.stop_requested = threading.Event()  # someone wants the library to stop this run
        self.user_aborted = False
        self.native_tokens = 0  # counted on the library's thread
        self.paused = False  # the callback returned 1 (pause) at the limit or at EOS: stopped exactly there
        self.abort_sent = False
        self.returned = threading.Event()
        self.rc: int | None = None
        self.consumer = threading.get_ident()  # the thread running generate()
        self.npu_yield = None  # called on the library's thread after each token (blocking pauses it)


class _Router:
    """Receives the library's callbacks and forwards them to the current run's queue.

    Kept separate from the handle (and without a reference to it) so the handle can be collected and
    its finalizer can still keep the callback alive until rkllm_destroy has returned.
    """

    def __init__(self, returns_int: bool, hidden_layer_state: int = RKLLM_RUN_NORMAL, can_release: bool = False):
        self.returns_int = returns_int
        self.hidden_layer_state = hidden_layer_state
        self.can_release = can_release
        self.current: _Run | None = None

    def on_result(self, result_ptr, userdata, state) -> int | None:
        run = self.current
        action = CALLBACK_CONTINUE
        try:
            if run is not None and userdata == run.id:
                action = self._deliver(run, result_ptr, state)
            else:
                log.debug("dropped a callback for run %s (current run: %s)", userdata, run and run.id)
        except BaseException as exc:
            log.exception("error in the librkllmrt result callback; aborting the run")
            if run is not None:
                run.events.put((_CALLBACK_FAILED, exc))
        return action if self.returns_int else None

    def _deliver(self, run: _Run, result_ptr, state: int) -> int:
        if run.hidden and state == self.hidden_layer_state and result_ptr:
            layer = result_ptr.contents.last_hidden_layer
            if layer.hidden_states and layer.embd_size > 0 and layer.num_tokens > 0:
                # Copied here: the library frees the buffer once the callback returns.
                shape = (layer.num_tokens, layer.embd_size)
                run.events.put((_HIDDEN, np.ctypeslib.as_array(layer.hidden_states, shape=shape).copy()))
                return CALLBACK_RELEASE if self.can_release else CALLBACK_CONTINUE  # copied: 1.3 may free it now
        if state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING):
            if result_ptr:
                r = result_ptr.contents
                if r.token_id >= 0:
                    run.events.put((_TOKEN, (r.token_id, r.text or b"")))
                    run.native_tokens += r.token_id not in run.eos
                    if run.npu_yield is not None and not run.stop_requested.is_set():
                        run.npu_yield()
                    if self.returns_int and (r.token_id in run.eos or run.native_tokens >= run.limit):
                        # Pausing stops the library right after this token, so its KV cache holds exactly
                        # what the bridge saw; an abort from another thread would let a few more in.
                        run.paused = True
                        return CALLBACK_PAUSE
        elif state == RKLLM_RUN_FINISH:
            perf = _Perf()
            if result_ptr and hasattr(result_ptr.contents, "perf"):
                p = result_ptr.contents.perf
                perf = _Perf(p.prefill_time_ms, p.generate_time_ms, p.prefill_tokens, p.memory_usage_mb)
            run.events.put((_FINISH, perf))
        elif state == RKLLM_RUN_ERROR:
            run.events.put((_ERROR, None))
        return CALLBACK_CONTINUE


def _destroy(cdll: ctypes.CDLL, handle_value: int, keepalive: tuple) -> None:
    """Free the native handle; ``keepalive`` (callbacks, param) must outlive this call."""
    rc = cdll.rkllm_destroy(ctypes.c_void_p(handle_value))
    if rc != 0:
        log.warning("rkllm_destroy returned %d", rc)
    del keepalive


class RKLLMHandle(ModelHandle):
    """A loaded RKLLM model. ``generate`` is not re-entrant (the bridge's scheduler serialises);
    ``abort`` and ``close`` may be called from any thread; ``close`` is idempotent."""

    def __init__(self, library: RKLLMLibrary, spec: ModelSpec, settings: LoadSettings | None = None,
                 stall_timeout_s: float = 600.0, abort_timeout_s: float = 30.0):
        self.spec = spec
        self.library = library
        self.abi = library.abi
        self.stall_timeout_s = stall_timeout_s
        self.abort_timeout_s = abort_timeout_s
        cdll = library.cdll
        if spec.weights is None:
            raise ModelLoadError(f"{spec.name}: the Modelfile has no FROM naming the .rkllm file")
        self.model_path = Path(spec.weights)
        self._param = library.abi_default_param()
        self._model_path_bytes = str(self.model_path).encode()
        self.ignored_settings = fill_param(self.abi, self._param, settings or settings_from_spec(spec),
                                           self._model_path_bytes)
        self._image_tags = image_tags(spec)
        if spec.options.get("VISION_ENCODER") and hasattr(self._param, "img_start"):  # before 1.3: set at init
            self._param.img_start, self._param.img_end, self._param.img_content = self._image_tags
        self._router = _Router(self.abi.callback_returns_int, self.abi.hidden_layer_state,
                               self.abi.callback_can_release)
        self._callback = self.abi.LLMResultCallback(self._router.on_result)
        self._callback_struct = None
        handle = LLMHandle()
        if self.abi.init_takes_callback_struct:
            self._callback_struct = self.abi.RKLLMCallback(result_callback=self._callback)
            rc = cdll.rkllm_init(ctypes.byref(handle), ctypes.byref(self._param), ctypes.byref(self._callback_struct))
        else:
            rc = cdll.rkllm_init(ctypes.byref(handle), ctypes.byref(self._param), self._callback)
        if rc != 0 or not handle.value:
            raise ModelLoadError(f"{spec.name}: rkllm_init failed ({rc}) for {self.model_path} with RKLLM "
                                 f"{library.version or '?'} (ABI {self.abi.name}); the library's log above says why")
        self._cdll = cdll
        self._handle = handle
        if spec.options.get("VISION_ENCODER") and "rkllm_set_chat_template" in self.abi.symbols:
            # The bridge sends a multimodal prompt already templated: the library must not wrap it again.
            cdll.rkllm_set_chat_template(handle, b"", b"", b"")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._run: _Run | None = None
        self._run_ids = itertools.count(1)
        self._closed = False
        self._broken: str | None = None
        self._close_pending = False
        #: False when the last run was stopped by rkllm_abort or produced tokens that were not delivered:
        #: the library's KV cache may then hold tokens the bridge never saw, so a keep_history
        #: follow-up must clear the cache first.
        self.last_stop_exact = True
        #: token ids the library's KV cache holds after an exact keep_history run (see runtimes.base)
        self.cached_ids: tuple = ()
        self._kv_dirty = False  # a keep_history run may have left something in the cache
        self._last_delivered: list = []
        self._perf = _Perf()
        #: the hidden size of this model's embeddings, once the library has reported it
        self.embedding_dim: int | None = None
        self._finalizer = weakref.finalize(self, _destroy, cdll, handle.value,
                                           (self._callback, self._callback_struct, self._param, self._router,
                                            self._image_tags))

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: Callable[[int], None],
                 keep_history: bool = False, on_text: OnText | None = None,
                 reuse_prefix: bool = False, images: ImagePrompt | None = None) -> GenerationResult:
        """Generate from token ids (RKLLM_INPUT_TOKEN). ``keep_history`` keeps the KV cache of this turn
        for the next one (RKLLM >= 1.2.0; ignored with a warning on 1.1). ``reuse_prefix`` (the bridge's
        mode, see runtimes.base) runs with keep_history, sends only the ids that extend ``cached_ids``
        and clears the library's cache first when the prompt does not extend it.

        With ``images`` the run is an RKLLM_INPUT_MULTIMODAL input (``images.text`` and the embeddings),
        unless the cache already holds every image of the prompt: then only the new token ids are sent."""
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise GenerationFailed("the prompt has no tokens")
        key = prompt_key(ids, images)
        reused = 0
        if reuse_prefix and self.abi.has_keep_history:
            reused = reusable_prefix(self.cached_ids, key)
            if reused and any(k < 0 for k in key[reused:]):
                reused = 0  # a new image in the suffix: the multimodal input carries the whole prompt
            if not reused and self._kv_dirty:
                self.clear_kv_cache()
            keep_history = True
        self.cached_ids = ()
        if images and not reused:
            inp, keepalive = self._multimodal_input(images)
        else:
            inp, keepalive = self._token_input(key[reused:])
        result = self._generate(inp, keepalive, len(key), params, on_token, on_text, keep_history)
        result.cached_tokens = reused
        if reuse_prefix and keep_history and self.last_stop_exact and result.finish_reason in ("stop", "length"):
            self.cached_ids = tuple(key) + tuple(self._last_delivered)
        return result

    def _token_input(self, ids: Sequence[int]) -> tuple:
        """The RKLLMInput of token ids (RKLLM_INPUT_TOKEN), and the array that must stay alive while the
        library reads it."""
        keepalive = (ctypes.c_int32 * len(ids))(*ids)
        inp = self.abi.RKLLMInput()
        inp.input_type = RKLLM_INPUT_TOKEN
        inp.token_input.input_ids = keepalive
        inp.token_input.n_tokens = len(ids)
        return inp, keepalive

    def _multimodal_input(self, images: ImagePrompt) -> tuple:
        """The RKLLMInput of a prompt with images, and what must stay alive while the library reads it."""
        first = images.images[0]
        if any(im.embedding.shape != first.embedding.shape for im in images.images):
            raise GenerationFailed(f"{self.spec.name}: the images' embeddings differ in shape")
        if len(images.images) > 1 and not self.abi.has_n_image:
            raise GenerationFailed(f"{self.spec.name}: RKLLM {self.abi.name} takes one image per prompt")
        embed = np.ascontiguousarray(np.concatenate([im.embedding for im in images.images]), dtype=np.float32)
        text = images.text.encode()
        inp = self.abi.RKLLMInput()
        inp.input_type = RKLLM_INPUT_MULTIMODAL
        mm = inp.multimodal_input
        mm.prompt = text
        target = mm.image if hasattr(mm, "image") else mm  # 1.3 nests the image fields in a struct
        target.image_embed = embed.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        target.n_image_tokens = first.n_tokens
        if self.abi.has_n_image:
            target.n_image = len(images.images)
            target.image_width, target.image_height = first.width, first.height
        if hasattr(target, "image_start"):
            target.image_start, target.image_end, target.image_content = self._image_tags
        return inp, (embed, text)

    def generate_prompt(self, prompt: str, params: GenerationParams, on_token: Callable[[int], None],
                        on_text: OnText | None = None, keep_history: bool = False, role: str = "user",
                        enable_thinking: bool = False) -> GenerationResult:
        """Generate from text (RKLLM_INPUT_PROMPT): the library applies its own chat template.
        ``role``/``enable_thinking`` are passed where the ABI has them (1.2.1+)."""
        text = prompt.encode()
        inp = self.abi.RKLLMInput()
        inp.input_type = RKLLM_INPUT_PROMPT
        inp.prompt_input = text
        if self.abi.has_role:
            inp.role = role.encode()
            inp.enable_thinking = enable_thinking
        return self._generate(inp, text, 0, params, on_token, on_text, keep_history)

    def _generate(self, inp, keepalive, n_prompt: int, params: GenerationParams, on_token, on_text,
                  keep_history: bool) -> GenerationResult:
        infer = self.abi.RKLLMInferParam()
        infer.mode = RKLLM_INFER_GENERATE
        if self.abi.has_role and not inp.role:
            inp.role = b"user"
        if self.abi.has_keep_history:
            infer.keep_history = 1 if keep_history else 0
            self._kv_dirty = bool(keep_history)
        elif keep_history:
            log.warning("RKLLM %s cannot keep the KV cache between runs: keep_history ignored", self.abi.name)
        sampling = sampling_param(self.abi, params, self._param)
        if sampling is not None:
            infer.sampling_params = ctypes.pointer(sampling)
            infer.max_new_tokens = max(1, params.max_new_tokens)
        run = self._start(inp, infer, (keepalive, sampling), max(1, params.max_new_tokens))
        try:
            return self._consume(run, n_prompt, on_token, on_text)
        finally:
            self._finish(run)

    def embed(self, prompt_ids: Sequence[int]) -> list[float]:
        """The prompt's last hidden layer (a RKLLM_INFER_GET_LAST_HIDDEN_LAYER run of the token ids, no
        history kept), mean-pooled over its tokens."""
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise GenerationFailed("the prompt has no tokens")
        inp, send = self._token_input(ids)
        if self.abi.has_role:
            inp.role = b"user"
        infer = self.abi.RKLLMInferParam()
        infer.mode = RKLLM_INFER_GET_LAST_HIDDEN_LAYER
        if self.abi.has_keep_history:
            infer.keep_history = 0  # the library starts from an empty cache and keeps nothing of this run
        self.cached_ids, self._kv_dirty = (), False
        run = self._start(inp, infer, send, 1, hidden=True)
        try:
            out = self._collect(run, lambda _token: None, None)
        finally:
            self._finish(run)
        self.last_stop_exact = not run.abort_sent
        if out.raised is not None:
            raise out.raised
        if out.error is not None:
            raise GenerationFailed(f"{self.spec.name}: {out.error}")
        if out.hidden is None:
            rc = f" (rkllm_run returned {run.rc})" if run.rc else ""
            raise GenerationFailed(f"{self.spec.name}: librkllmrt gave no hidden states for the prompt{rc}")
        self.embedding_dim = int(out.hidden.shape[1])
        return [float(x) for x in out.hidden.mean(axis=0, dtype=np.float64)]

    def _start(self, inp, infer, keepalive, limit: int, hidden: bool = False) -> _Run:
        with self._lock:
            if self._closed:
                raise GenerationFailed(f"{self.spec.name}: the model handle is closed")
            if self._broken:
                raise GenerationFailed(f"{self.spec.name}: the handle is unusable: {self._broken}")
            if self._run is not None:
                raise GenerationFailed(f"{self.spec.name}: a generation is already running on this handle")
            run = _Run(next(self._run_ids), limit, frozenset(self.spec.eos_token_ids), hidden)
            run.npu_yield = self.npu_yield
            self._run = run
            self.last_stop_exact = False  # until the run ends without an abort
            self._router.current = run
        worker = threading.Thread(target=self._native_run, args=(run, inp, infer, keepalive),
                                  name=f"rkllm-run-{self.spec.name}-{run.id}", daemon=True)
        worker.start()
        return run

    def _native_run(self, run: _Run, inp, infer, keepalive) -> None:
        rc = 0
        try:
            if not run.stop_requested.is_set():
                rc = self._cdll.rkllm_run(self._handle, ctypes.byref(inp), ctypes.byref(infer),
                                          ctypes.c_void_p(run.id))
        finally:
            run.rc = rc
            run.returned.set()
            run.events.put((_RETURNED, rc))
            del keepalive

    def _consume(self, run: _Run, n_prompt: int, on_token, on_text) -> GenerationResult:
        """Take the run's events until rkllm_run has returned; deliver tokens; decide how it ended."""
        return self._result(run, self._collect(run, on_token, on_text), n_prompt)

    def _collect(self, run: _Run, on_token, on_text) -> _Outcome:
        """What the run delivered, once rkllm_run has returned."""
        out = _Outcome()
        last_event = time.monotonic()
        while True:
            try:
                kind, payload = run.events.get(timeout=POLL_S)
            except queue.Empty:
                self._on_idle(run, out, time.monotonic() - last_event)
                continue
            last_event = time.monotonic()
            if kind == _RETURNED:
                break
            if kind == _TOKEN:
                self._on_token(run, out, payload, on_token, on_text)
            elif kind == _HIDDEN:
                out.hidden = payload
            elif kind == _FINISH:
                out.perf = payload
                if out.finish is None and not run.stop_requested.is_set():
                    out.finish = "length" if out.completion >= run.limit else "stop"
            elif kind == _ERROR and not (out.finish or run.user_aborted):
                out.error = f"librkllmrt reported an error (RKLLM_RUN_ERROR) after {out.completion} tokens"
            elif kind == _CALLBACK_FAILED:
                out.error = f"the result callback failed: {payload!r}"
                self._request_stop(run)
        return out

    def _on_idle(self, run: _Run, out: _Outcome, quiet_s: float) -> None:
        if run.stop_requested.is_set():
            self._native_abort(run)  # again: an abort sent before the run started is lost
            if quiet_s > self.abort_timeout_s:
                self._broken = f"librkllmrt did not stop within {self.abort_timeout_s:.0f}s of an abort"
                raise GenerationFailed(f"{self.spec.name}: {self._broken}")
        elif quiet_s > self.stall_timeout_s:
            out.error = f"no output from librkllmrt for {self.stall_timeout_s:.0f}s"
            self._request_stop(run)

    def _on_token(self, run: _Run, out: _Outcome, payload: tuple, on_token, on_text) -> None:
        token_id, text = payload
        if out.finish or out.error or out.raised or run.stop_requested.is_set():
            out.dropped += 1  # the tail after we decided to stop: never delivered
            return
        if token_id in run.eos:
            out.finish = "stop"
            out.eos_id = token_id
            self._request_stop(run)
            return
        out.completion += 1
        out.delivered.append(token_id)
        try:
            on_token(token_id)
            if on_text is not None:
                on_text(token_id, text)
        except BaseException as exc:  # noqa: BLE001 - re-raised once the library stopped
            out.raised = exc
            self._request_stop(run)
            return
        if out.completion >= run.limit:
            out.finish = "length"
            self._request_stop(run)

    def _result(self, run: _Run, out: _Outcome, n_prompt: int) -> GenerationResult:
        if out.raised is not None:
            raise out.raised
        if out.error is not None:
            raise GenerationFailed(f"{self.spec.name}: {out.error}")
        finish = out.finish
        if run.user_aborted and finish is None:
            finish = "abort"
        if finish is None:
            if run.rc not in (0, None):
                raise GenerationFailed(f"{self.spec.name}: rkllm_run returned {run.rc} (see the library's log)")
            finish = "stop"
        perf = out.perf
        self._perf = perf if perf.memory_mb is not None else self._perf
        self.last_stop_exact = not run.abort_sent and not out.dropped
        # What the library's cache gained besides the prompt: every token it emitted, EOS included.
        self._last_delivered = out.delivered + ([out.eos_id] if out.eos_id is not None else [])
        return GenerationResult(finish_reason=finish, prompt_tokens=n_prompt or (perf.prefill_tokens or 0),
                                completion_tokens=out.completion, runtime_prefill_ms=perf.prefill_ms,
                                runtime_decode_ms=perf.decode_ms)

    def _finish(self, run: _Run) -> None:
        """Make sure the library is done with ``run`` before the handle serves again."""
        if not run.returned.is_set() and not self._broken:
            self._request_stop(run)
            deadline = time.monotonic() + self.abort_timeout_s
            while not run.returned.wait(POLL_S):
                self._native_abort(run)
                if time.monotonic() > deadline:
                    self._broken = f"librkllmrt did not stop within {self.abort_timeout_s:.0f}s of an abort"
                    log.error("%s: %s", self.spec.name, self._broken)
                    break
        with self._lock:
            if run.returned.is_set():
                self._router.current = None
            self._run = None
            self._idle.notify_all()
            if self._close_pending and not self._closed:
                self._closed = True
                self._finalizer()

    # ------------------------------------------------------------------ control

    def _request_stop(self, run: _Run) -> None:
        run.stop_requested.set()
        self._native_abort(run)

    def _native_abort(self, run: _Run) -> None:
        if run.paused and not run.user_aborted:
            return  # the callback already paused the run; it is returning by itself
        # Under the lock so that close() cannot destroy the handle between the check and the call.
        with self._lock:
            if not self._closed and not run.returned.is_set():
                run.abort_sent = True
                self._cdll.rkllm_abort(self._handle)

    def abort(self) -> None:
        """Stop the running generation (finish_reason "abort"); harmless when idle. Thread-safe."""
        with self._lock:
            run = self._run
        if run is not None:
            run.user_aborted = True
            self._request_stop(run)

    def is_running(self) -> bool:
        """Whether the library reports a run in progress (its return convention differs per release)."""
        with self._lock:
            if self._closed:
                return False
            return self._cdll.rkllm_is_running(self._handle) == self.abi.is_running_busy

    def clear_kv_cache(self, keep_system_prompt: bool = False) -> None:
        """Drop the KV cache kept by ``keep_history`` runs (RKLLM >= 1.2.0; a no-op on 1.1, which keeps none)."""
        if self.abi.clear_kv_cache_args == 0:
            return
        with self._lock:
            self._check_idle("clear the KV cache")
            if self.abi.clear_kv_cache_args == 2:
                rc = self._cdll.rkllm_clear_kv_cache(self._handle, int(keep_system_prompt))
            else:
                rc = self._cdll.rkllm_clear_kv_cache(self._handle, int(keep_system_prompt), None, None)
        self.cached_ids, self._kv_dirty = (), False
        if rc != 0:
            raise GenerationFailed(f"{self.spec.name}: rkllm_clear_kv_cache returned {rc}")

    def kv_cache_size(self) -> int | None:
        """Positions held in the KV cache (RKLLM >= 1.2.1), else None."""
        if not hasattr(self._cdll, "rkllm_get_kv_cache_size") or self.abi.clear_kv_cache_args != 4:
            return None
        sizes = (ctypes.c_int * 8)()
        with self._lock:
            self._check_idle("read the KV cache size")
            rc = self._cdll.rkllm_get_kv_cache_size(self._handle, sizes)
        return sizes[0] if rc == 0 else None

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None:
        """Load a LoRA adapter file into this handle."""
        adapter = RKLLMLoraAdapter(path.encode(), name.encode(), scale)
        with self._lock:
            self._check_idle("load a LoRA adapter")
            rc = self._cdll.rkllm_load_lora(self._handle, ctypes.byref(adapter))
        if rc != 0:
            raise ModelLoadError(f"{self.spec.name}: rkllm_load_lora({path}) returned {rc}")

    def _check_idle(self, what: str) -> None:
        if self._closed:
            raise GenerationFailed(f"{self.spec.name}: cannot {what}: the handle is closed")
        if self._run is not None:
            raise GenerationFailed(f"{self.spec.name}: cannot {what} while a generation is running")

    def close(self) -> None:
        """Abort any running generation, wait for it, and destroy the native handle (once)."""
        with self._lock:
            if self._closed:
                return
            run = self._run
        if run is not None:
            run.user_aborted = True
            self._request_stop(run)
            if run.consumer == threading.get_ident():
                with self._lock:
                    self._close_pending = True  # called from on_token: destroy once generate returns
                return
        with self._lock:
            self._idle.wait_for(lambda: self._run is None, timeout=self.abort_timeout_s + 5)
            if self._closed:
                return
            if self._run is not None:
                # Still running (e.g. close() called from on_token): destroy when the run ends.
                self._close_pending = True
                return
            self._closed = True
            self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory_mb(self) -> float:
        if self._perf.memory_mb:
            return float(self._perf.memory_mb)
        try:
            return self.model_path.stat().st_size / (1 << 20)
        except OSError:
            return 0.0

    def ignored(self) -> list[str]:
        return list(self.ignored_settings)
