"""The runtime interface every LLM backend of the bridge implements (rkllm, host, sim).

A runtime loads a model into a :class:`ModelHandle`. A handle runs one generation at a time:
``generate`` blocks the calling thread, calls ``on_token`` once per generated token id (from any
thread, in order) and returns a :class:`GenerationResult`. ``abort`` may be called from any other
thread; ``generate`` then returns promptly with ``finish_reason == "abort"`` and the handle is
ready for the next request only once ``generate`` has returned (no tail of an aborted request can
reach the next one). Text is not produced here: the bridge detokenizes ids itself so that every
runtime gets the same UTF-8-safe stream.

Prefix reuse (KV cache kept across turns): after a generation a handle's ``cached_ids`` are exactly the
token ids its KV cache holds (the prompt and the reply tokens it evaluated), or ``()`` when nothing can
be reused (after an abort, an error, or an end that may have left unseen tokens in the cache). With
``generate(..., reuse_prefix=True)`` a handle whose ``cached_ids`` are a strict prefix of the new
prompt evaluates only the new tokens (``GenerationResult.cached_tokens`` says how many it skipped);
for any other prompt it clears its cache first. ``reuse_prefix=False`` always starts from an empty
cache. The scheduler reads ``cached_ids`` to send a request to the handle that holds most of it.

Images (vision-language models): ``generate(..., images=ImagePrompt)`` adds the vision encoder's output
for each image at a position of ``prompt_ids``. For prefix reuse and the context budget an image counts
as its ``n_tokens`` *key ids*: negative ids derived from the image's hash (:func:`image_key_ids`), so a
cached prefix holds an image only if it is the same image. Only runtimes whose ``max_images`` is above 0
accept images.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

OnToken = Callable[[int], None]

#: sampling fields a request may set (``max_new_tokens`` is always enforced by the bridge itself)
SAMPLING_FIELDS = frozenset({"temperature", "top_k", "top_p", "repeat_penalty", "frequency_penalty",
                             "presence_penalty", "seed"})


def reusable_prefix(cached_ids: Sequence[int], prompt_ids: Sequence[int]) -> int:
    """How many leading ids of ``prompt_ids`` a cache holding ``cached_ids`` already covers: all of the
    cache when it is a strict prefix of the prompt (at least one new token must be evaluated), else 0."""
    n = len(cached_ids)
    if 0 < n < len(prompt_ids) and list(prompt_ids[:n]) == list(cached_ids):
        return n
    return 0


@dataclass(frozen=True)
class PromptImage:
    """One image as the LLM takes it: the vision encoder's output ``embedding`` (float32, n_tokens x dim)
    for the image whose bytes hash to ``digest``; ``width``/``height`` are the size the encoder saw."""

    embedding: np.ndarray
    digest: str
    width: int
    height: int

    @property
    def n_tokens(self) -> int:
        return int(self.embedding.shape[0])


@dataclass(frozen=True)
class ImagePrompt:
    """The images of a prompt: ``positions[i]`` is the index in the prompt's token ids before which image
    ``i`` stands (ascending); ``text`` is the whole prompt as text with ``placeholder`` where each image
    stands, for runtimes that take text and embeddings (RKLLM's multimodal input)."""

    images: Tuple[PromptImage, ...]
    positions: Tuple[int, ...]
    text: str
    placeholder: str = "<image>"

    @property
    def n_image_tokens(self) -> int:
        return sum(im.n_tokens for im in self.images)


def image_key_ids(image: PromptImage) -> Tuple[int, ...]:
    """The ids an image stands for in a prefix-cache key: negative (no real token has them), derived from
    the image's hash, one per image token."""
    key = -1 - int(image.digest[:15], 16)
    return (key,) * image.n_tokens


def prompt_key(prompt_ids: Sequence[int], images: Optional[ImagePrompt]) -> List[int]:
    """``prompt_ids`` with each image's key ids inserted at its position: what a KV cache holds after
    evaluating the prompt, and what the context budget counts."""
    if not images:
        return list(prompt_ids)
    out: List[int] = []
    start = 0
    for image, pos in zip(images.images, images.positions, strict=True):
        out.extend(prompt_ids[start:pos])
        out.extend(image_key_ids(image))
        start = pos
    out.extend(prompt_ids[start:])
    return out


class RuntimeError_(Exception):
    """Base class of runtime failures (named with a trailing underscore to keep the builtin)."""


class RuntimeUnavailable(RuntimeError_):
    """The runtime cannot run on this machine (library missing, wrong architecture, ...)."""


class ModelLoadError(RuntimeError_):
    """The model could not be loaded (bad file, version mismatch, out of memory, ...)."""


class EmbeddingsUnsupported(RuntimeError_):
    """The runtime (or this ABI of it) has no hidden-state output."""


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
    #: prompt tokens taken from the KV cache of the previous turn instead of being evaluated again
    cached_tokens: int = 0


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
    #: the token ids the KV cache holds after the last generation, () when none are reusable
    cached_ids: Tuple[int, ...] = ()
    #: set by the bridge during a generation: called between tokens on the thread that drives the NPU
    #: (so blocking in it pauses the model); the NPU arbiter uses it to let an image job take a turn
    npu_yield: Optional[Callable[[], None]] = None
    #: the size of the vectors ``embed`` returns, once the runtime has reported it (None before)
    embedding_dim: Optional[int] = None

    @abc.abstractmethod
    def generate(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: OnToken,
                 reuse_prefix: bool = False) -> GenerationResult:
        """Run one generation; stop at an EOS id (not passed to ``on_token``), at max_new_tokens or on abort.
        With ``reuse_prefix``, evaluate only what extends ``cached_ids`` (see the module docstring).
        Handles of runtimes with ``max_images > 0`` also take ``images: ImagePrompt``."""

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

    def embed(self, prompt_ids: Sequence[int]) -> List[float]:
        """The mean over the prompt's tokens of the model's last hidden layer. A runtime that cannot give
        hidden states raises ``EmbeddingsUnsupported``."""
        raise EmbeddingsUnsupported(f"the runtime serving {self.spec.name} gives no hidden states")

    def __enter__(self) -> "ModelHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runtime(abc.ABC):
    """A backend that turns model specs into handles."""

    name: str = "?"
    #: human-readable label shown by /health, e.g. "simulated RK3588 (qwen2.5-1.5b profile)"
    label: str = ""

    def max_images(self) -> int:
        """How many images one prompt may carry to this runtime's handles; 0: it has no image input."""
        return 0

    def no_images_reason(self) -> str:
        """Why this runtime takes no image (shown in the 400 a request with images gets)."""
        return f"the {self.name} runtime has no image input"

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

    def per_request_params(self) -> frozenset:
        """The ``SAMPLING_FIELDS`` this runtime honours per request; the others are fixed when a model
        loads (from its Modelfile)."""
        return SAMPLING_FIELDS
