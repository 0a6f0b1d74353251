"""``sim``: a timing twin of an RK3588 running RKLLM. It replays a profile (load time, prefill ms per
prompt token, decode tokens/s, memory) and emits deterministic tokens, so that schedulers, pools and
clients can be tested and benchmarked without a board. Everything it reports is labelled simulated.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..modelfile import render_modelfile
from ..tokenizer import TOKENIZER_FILES
from .base import (
    GenerationParams,
    GenerationResult,
    ImagePrompt,
    ModelHandle,
    ModelLoadError,
    ModelSpec,
    OnToken,
    Runtime,
    prompt_key,
    reusable_prefix,
)

SIM_MAX_IMAGES = 16


@dataclass(frozen=True)
class SimProfile:
    name: str
    prefill_ms_per_token: float  # 0 = instant
    decode_tok_s: float  # 0 = unthrottled
    load_s: float
    memory_mb: float
    source: str = ""


# RK3588, RKLLM 1.3.0, w8a8, from the official performance table (decode is memory-bandwidth bound).
# The table gives a TTFT only for Qwen2.5-1.5B (378 ms); we spread it over an assumed 64-token prompt.
# For the other models prefill is that rate scaled by the ratio of decode speeds: an estimate, not data.
_QWEN15_PREFILL = 378 / 64


def _scaled_prefill(decode_tok_s: float) -> float:
    return _QWEN15_PREFILL * 16.69 / decode_tok_s


PROFILES: Dict[str, SimProfile] = {
    p.name: p for p in (
        SimProfile("qwen2.5-1.5b-rk3588", _QWEN15_PREFILL, 16.69, 2.0, 1689,
                   "RKLLM 1.3.0 w8a8: TTFT 378 ms, 16.69 tok/s, 1689 MB"),
        SimProfile("qwen2-0.5b-rk3588", _scaled_prefill(41.6), 41.6, 1.0, 700,
                   "RKLLM 1.3.0 w8a8: 41.6 tok/s (prefill and memory estimated)"),
        SimProfile("tinyllama-1.1b-rk3588", _scaled_prefill(24.4), 24.4, 1.5, 1200,
                   "RKLLM 1.3.0 w8a8: 24.4 tok/s (prefill and memory estimated)"),
        SimProfile("instant", 0.0, 0.0, 0.0, 100, "no delays: exposes the bridge's own per-token cost"),
    )
}
DEFAULT_PROFILE = "qwen2-0.5b-rk3588"

# What the twin "says": fixed text with accents and an emoji, so multi-byte characters get split across
# tokens like real model output does.
DEFAULT_REPLY = ("Simulated reply from an RK3588 timing twin. Les élèves ont mangé des crêpes 🥞 au café, "
                 "naïve façade, 日本語 text, and the end.")


class SimRuntime(Runtime):
    name = "sim"

    def __init__(self, profile: str = DEFAULT_PROFILE, *, prefill_ms_per_token: Optional[float] = None,
                 decode_tok_s: Optional[float] = None, load_s: Optional[float] = None, tokenizer_for=None):
        if profile not in PROFILES:
            raise ValueError(f"unknown sim profile {profile!r}; known: {', '.join(sorted(PROFILES))}")
        overrides = {k: v for k, v in (("prefill_ms_per_token", prefill_ms_per_token),
                                       ("decode_tok_s", decode_tok_s), ("load_s", load_s)) if v is not None}
        self.profile = replace(PROFILES[profile], **overrides)
        self.label = (f"simulated RK3588 ({self.profile.name}: {self.profile.prefill_ms_per_token:.2f} ms/prompt "
                      f"token, {self.profile.decode_tok_s or 'unthrottled'} tok/s)")
        self._tokenizer_for = tokenizer_for  # name -> ChatTokenizer, to turn the reply text into real ids
        self.handles = HandleCensus()

    def describe(self) -> dict:
        p = self.profile
        return {"name": self.name, "label": self.label, "simulated": True, "profile": p.name,
                "prefill_ms_per_token": p.prefill_ms_per_token, "decode_tok_s": p.decode_tok_s,
                "load_s": p.load_s, "source": p.source, "handles": self.handles.snapshot()}

    def estimate_mb(self, spec: ModelSpec) -> float:
        """The profile's memory: what one loaded instance will take."""
        return self.profile.memory_mb

    def max_images(self) -> int:
        """The twin takes images (its reply then starts at an offset fixed by their embeddings)."""
        return SIM_MAX_IMAGES

    def load(self, spec: ModelSpec) -> ModelHandle:
        reply_text = spec.options.get("SIM_REPLY", DEFAULT_REPLY)
        if self._tokenizer_for is None:
            raise ModelLoadError("sim runtime needs the model's tokenizer to produce its reply tokens")
        reply_ids = list(self._tokenizer_for(spec.name).encode(reply_text))
        if not reply_ids:
            raise ModelLoadError(f"{spec.name}: SIM_REPLY encodes to no tokens")
        try:
            reply_len = int(spec.options.get("SIM_REPLY_TOKENS", len(reply_ids)))
        except ValueError:
            raise ModelLoadError(f"{spec.name}: SIM_REPLY_TOKENS must be an integer") from None
        return SimHandle(spec, self.profile, reply_ids, reply_len, self.handles)


class HandleCensus:
    """Handles alive per model (loaded and not yet closed) and the most ever alive at once: what the
    twin really holds, to check the bridge's memory accounting against."""

    def __init__(self):
        self._lock = threading.Lock()
        self._alive: dict = {}
        self._peak: dict = {}

    def opened(self, name: str) -> None:
        with self._lock:
            self._alive[name] = self._alive.get(name, 0) + 1
            self._peak[name] = max(self._peak.get(name, 0), self._alive[name])

    def closed(self, name: str) -> None:
        with self._lock:
            self._alive[name] -= 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"alive": dict(self._alive), "peak": dict(self._peak)}


def embedding_dim(spec: ModelSpec) -> int:
    config = spec.directory / "config.json"
    if config.is_file():
        try:
            size = json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
        except ValueError:
            size = None
        if isinstance(size, int) and size > 0:
            return size
    try:
        return max(1, int(spec.options.get("SIM_EMBEDDING_DIM", 64)))
    except ValueError:
        return 64


class SimHandle(ModelHandle):
    def __init__(self, spec: ModelSpec, profile: SimProfile, reply_ids: Sequence[int], reply_len: int,
                 census: Optional[HandleCensus] = None):
        self.spec = spec
        self._census = census
        self.profile = profile
        self.reply_ids = list(reply_ids)
        self.reply_len = reply_len  # tokens before EOS; the reply text repeats to fill it
        self._abort = threading.Event()
        self._closed = False
        self.cached_ids = ()
        self._image_offset = 0
        self.embedding_dim = embedding_dim(spec)
        self.trace: Optional[List[tuple]] = None  # when a list: (kind, start, end) of each simulated NPU step
        if census is not None:
            census.opened(spec.name)  # the load takes memory from its start, as on the board
        self._wait(profile.load_s)

    @property
    def memory_mb(self) -> float:
        return self.profile.memory_mb

    def embed(self, prompt_ids: Sequence[int]) -> List[float]:
        """Deterministic stand-in hidden states, mean-pooled: each token a fixed vector of the model's
        hidden size (``config.json``'s ``hidden_size``, else ``SIM_EMBEDDING_DIM``, else 64)."""
        dim = embedding_dim(self.spec)
        self._wait(self.profile.prefill_ms_per_token * len(prompt_ids) / 1000)
        ids = list(prompt_ids) or [0]
        return [sum(math.sin((t + 1) * (i + 1) * 0.6180339887) for t in ids) / len(ids) for i in range(dim)]

    def _wait(self, seconds: float) -> bool:
        """Sleep like the NPU would; returns True if aborted meanwhile (the sim's only real wait)."""
        return self._abort.wait(seconds) if seconds > 0 else self._abort.is_set()

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: OnToken,
                 reuse_prefix: bool = False, images: Optional[ImagePrompt] = None) -> GenerationResult:
        """Images count as their tokens (prefill, context, prefix key) and move where the reply starts."""
        if self._closed:
            raise ModelLoadError(f"{self.spec.name}: handle is closed")
        self._abort.clear()
        self._image_offset = _embedding_offset(images)
        prompt_ids = prompt_key(prompt_ids, images)
        reused = reusable_prefix(self.cached_ids, prompt_ids) if reuse_prefix else 0
        self.cached_ids = ()  # until this run ends exactly
        started = time.monotonic()
        result = GenerationResult("stop", len(prompt_ids), 0, cached_tokens=reused)
        # Prefill is charged only for the tokens the cache does not hold, as on the NPU with keep_history.
        if self._wait((len(prompt_ids) - reused) * self.profile.prefill_ms_per_token / 1000.0):
            result.finish_reason = "abort"
            return result
        prefill_done = time.monotonic()
        emitted = self._decode(prompt_ids, params, on_token, result)
        if result.finish_reason != "abort":
            self.cached_ids = tuple(prompt_ids) + tuple(emitted)
        result.runtime_prefill_ms = (prefill_done - started) * 1000
        result.runtime_decode_ms = (time.monotonic() - prefill_done) * 1000
        return result

    def _decode(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: OnToken,
                result: GenerationResult) -> List[int]:
        period = 1.0 / self.profile.decode_tok_s if self.profile.decode_tok_s > 0 else 0.0
        # Deterministic: the reply starts at an offset fixed by the prompt and the seed (and the images).
        offset = (len(prompt_ids) + (params.seed or 0)) % len(self.reply_ids) if params.seed is not None else 0
        offset = (offset + self._image_offset) % len(self.reply_ids)
        emitted: List[int] = []
        next_due = time.monotonic()
        while result.completion_tokens < params.max_new_tokens:
            if result.completion_tokens >= self.reply_len:
                break  # the reply is over: EOS
            if self.npu_yield is not None:
                paused = time.monotonic()
                self.npu_yield()
                next_due += time.monotonic() - paused  # a turn given away is not decode time
            step_start = time.monotonic()
            if period:
                next_due += period
                if self._wait(max(0.0, next_due - time.monotonic())):
                    result.finish_reason = "abort"
                    break
            elif self._abort.is_set():
                result.finish_reason = "abort"
                break
            token = self.reply_ids[(offset + result.completion_tokens) % len(self.reply_ids)]
            if self.trace is not None:
                self.trace.append(("decode", step_start, time.monotonic()))
            on_token(token)
            emitted.append(token)
            result.completion_tokens += 1
        else:
            result.finish_reason = "length"
        return emitted

    def abort(self) -> None:
        self._abort.set()

    def close(self) -> None:
        if not self._closed and self._census is not None:
            self._census.closed(self.spec.name)
        self._closed = True
        self.cached_ids = ()
        self._abort.set()


def _embedding_offset(images: Optional[ImagePrompt]) -> int:
    """A number fixed by the images' embeddings (0 without images), so two images give two replies."""
    if not images:
        return 0
    crc = 0
    for image in images.images:
        crc = zlib.crc32(image.embedding.tobytes(), crc)
    return 1 + crc % 9973


def write_sim_model(root: Path, name: str, tokenizer_dir: Path, **modelfile) -> Path:
    """Write a model directory the sim runtime serves: a Modelfile (``FROM`` plus ``modelfile`` keys, e.g.
    ``NUM_CTX``, ``SIM_REPLY``, ``SIM_REPLY_TOKENS``), a placeholder weights file and the tokenizer files of
    ``tokenizer_dir`` (e.g. the embedded default model's). Try a pool or a client without a board this way."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    for fname in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / fname).is_file():
            shutil.copy(Path(tokenizer_dir) / fname, d / fname)
    (d / f"{name}.rkllm").write_bytes(b"sim weights placeholder\n")
    (d / "Modelfile").write_text(render_modelfile({"FROM": f"{name}.rkllm", **modelfile}))
    return d
