"""The runtime interface every LLM backend of the bridge implements (rkllm, host, sim).

A runtime loads a model into a :class:`ModelHandle`. A handle runs one generation at a time:
``generate`` blocks the calling thread, calls ``on_token`` once per generated token id (from any
thread, in order) and returns a :class:`GenerationResult`. ``abort`` may be called from any other
thread; ``generate`` then returns promptly with ``finish_reason == "abort"`` and the handle is
ready for the next request only once ``generate`` has returned (no tail of an aborted request can
reach the next one). Text is not produced here: the bridge detokenizes ids itself so that every
runtime gets the same UTF-8-safe stream.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

OnToken = Callable[[int], None]


class RuntimeError_(Exception):
    """Base class of runtime failures (named with a trailing underscore to keep the builtin)."""


class RuntimeUnavailable(RuntimeError_):
    """The runtime cannot run on this machine (library missing, wrong architecture, ...)."""


class ModelLoadError(RuntimeError_):
    """The model could not be loaded (bad file, version mismatch, out of memory, ...)."""


class GenerationFailed(RuntimeError_):
    """The runtime reported an error in the middle of a generation."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and length parameters of one request, already merged with the Modelfile defaults."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 20
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None


@dataclass
class GenerationResult:
    """What a finished generation reports. ``finish_reason`` is one of stop, length, abort."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Times the runtime measured itself, if it can (e.g. RKLLM's perf struct); the bridge measures
    # TTFT and decode speed around the callbacks regardless.
    runtime_prefill_ms: Optional[float] = None
    runtime_decode_ms: Optional[float] = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runtime needs to load one model, resolved from the model store."""

    name: str
    directory: Path
    weights: Optional[Path]  # the FROM file/dir, resolved inside ``directory``
    num_ctx: int
    eos_token_ids: Sequence[int]
    vocab_size: int
    options: Mapping[str, str] = field(default_factory=dict)  # every Modelfile key, upper-case


class ModelHandle(abc.ABC):
    """One loaded instance of a model. Not thread-safe for ``generate``: the scheduler serialises."""

    spec: ModelSpec

    @abc.abstractmethod
    def generate(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: OnToken) -> GenerationResult:
        """Run one generation; stop at an EOS id (not passed to ``on_token``), at max_new_tokens or on abort."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Ask a running ``generate`` to stop; harmless when idle. Thread-safe."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the native resources. Idempotent."""

    @property
    def memory_mb(self) -> float:
        """Approximate resident size of the model, for eviction decisions and /api/ps."""
        return 0.0

    def __enter__(self) -> "ModelHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runtime(abc.ABC):
    """A backend that turns model specs into handles."""

    name: str = "?"
    #: human-readable label shown by /health, e.g. "simulated RK3588 (qwen2.5-1.5b profile)"
    label: str = ""

    @abc.abstractmethod
    def load(self, spec: ModelSpec) -> ModelHandle:
        """Load one instance of the model. Raises ModelLoadError with a clear message."""

    def weights_for(self, directory: Path, from_value: Optional[str]) -> Optional[Path]:
        """Resolve the Modelfile's FROM for this runtime (default: a file or dir inside the model dir)."""
        if not from_value:
            return None
        return (directory / from_value).resolve()

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label or self.name}
