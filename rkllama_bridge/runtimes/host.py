"""``host``: transformers on the host CPU. Real answers from real models anywhere (the embedded default
SmolLM2-135M-Instruct runs ~11 tok/s on 2 cores), streamed token by token with the same contract as
the NPU runtime: abort stops at the next token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import List, Optional, Sequence

from .base import (
    GenerationParams,
    GenerationResult,
    ModelHandle,
    ModelLoadError,
    ModelSpec,
    OnToken,
    Runtime,
    reusable_prefix,
)

log = logging.getLogger(__name__)

REPEAT_WINDOW = 64  # tokens the repeat penalty looks back over, as llama.cpp's repeat_last_n


class HostRuntime(Runtime):
    name = "host"

    def no_images_reason(self) -> str:
        return ("the host runtime (transformers on the CPU) has no vision model: it runs text models only; serve "
                "a vision-language model (Modelfile VISION_ENCODER) with --runtime rkllm, or sim off the board")

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads or os.cpu_count() or 1
        self.label = f"host CPU via transformers ({self.threads} threads)"

    def load(self, spec: ModelSpec) -> ModelHandle:
        weights = spec.weights
        if weights is None or not weights.exists():
            raise ModelLoadError(f"{spec.name}: weights {weights} not found (Modelfile FROM)")
        started = time.monotonic()
        import torch  # heavy: only when a model is loaded
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(self.threads)
        try:
            if weights.suffix == ".gguf":
                model = AutoModelForCausalLM.from_pretrained(weights.parent, gguf_file=weights.name,
                                                             dtype=torch.float32)
            elif weights.is_dir():
                model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
            else:
                raise ModelLoadError(f"{spec.name}: the host runtime loads a Hugging Face directory or a .gguf file, "
                                     f"not {weights.name} (an .rkllm file needs --runtime rkllm on a board)")
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises many types for a bad directory
            raise ModelLoadError(f"{spec.name}: cannot load {weights}: {exc}") from exc
        model.eval()
        log.info("host runtime loaded %s in %.2f s", spec.name, time.monotonic() - started)
        return HostHandle(spec, model)


class HostHandle(ModelHandle):
    def __init__(self, spec: ModelSpec, model):
        self.spec = spec
        self.model = model
        self._abort = threading.Event()
        self._eos = set(spec.eos_token_ids)
        self.cached_ids = ()
        self._past = None  # the transformers cache holding exactly ``cached_ids``

    @property
    def memory_mb(self) -> float:
        if self.model is None:
            return 0.0
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20

    def embed(self, prompt_ids: Sequence[int]) -> List[float]:
        """The real last hidden layer of the model, mean-pooled over the prompt's tokens (the KV cache of
        the generations is left as it is)."""
        import torch

        if self.model is None:
            raise ModelLoadError(f"{self.spec.name}: handle is closed")
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(prompt_ids)]), output_hidden_states=True, use_cache=False)
        return [float(x) for x in out.hidden_states[-1][0].mean(dim=0)]

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams, on_token: OnToken,
                 reuse_prefix: bool = False) -> GenerationResult:
        import torch

        if self.model is None:
            raise ModelLoadError(f"{self.spec.name}: handle is closed")
        self._abort.clear()
        reused = reusable_prefix(self.cached_ids, prompt_ids) if reuse_prefix else 0
        past = self._past if reused else None
        self.cached_ids, self._past = (), None  # until this run ends exactly
        result = GenerationResult("length", len(prompt_ids), 0, cached_tokens=reused)
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        history: List[int] = list(prompt_ids)
        fed: List[int] = list(prompt_ids)  # what the cache holds once the current forward pass is done
        started = time.monotonic()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(prompt_ids[reused:])]), past_key_values=past, use_cache=True)
            result.runtime_prefill_ms = (time.monotonic() - started) * 1000
            while result.completion_tokens < params.max_new_tokens:
                if self._abort.is_set():
                    result.finish_reason = "abort"
                    break
                token = sample_next(out.logits[0, -1], history, params, generator)
                if token in self._eos:
                    result.finish_reason = "stop"
                    break
                on_token(token)
                history.append(token)
                result.completion_tokens += 1
                if result.completion_tokens >= params.max_new_tokens:
                    break
                if self.npu_yield is not None:
                    self.npu_yield()
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
                fed.append(token)
        if result.finish_reason != "abort":
            self.cached_ids, self._past = tuple(fed), out.past_key_values
        result.runtime_decode_ms = (time.monotonic() - started) * 1000 - result.runtime_prefill_ms
        return result

    def abort(self) -> None:
        self._abort.set()

    def close(self) -> None:
        self._abort.set()
        self.cached_ids, self._past = (), None
        self.model = None


def sample_next(logits, history: Sequence[int], params: GenerationParams, generator=None) -> int:
    """One token from ``logits`` with llama.cpp-style repeat penalty, then temperature, top-k and top-p."""
    import torch

    logits = logits.float().clone()
    if params.repeat_penalty and params.repeat_penalty != 1.0 and history:
        recent = torch.tensor(sorted(set(history[-REPEAT_WINDOW:])), dtype=torch.long)
        recent = recent[recent < logits.numel()]
        picked = logits[recent]
        logits[recent] = torch.where(picked > 0, picked / params.repeat_penalty, picked * params.repeat_penalty)
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k > 0:
        k = min(params.top_k, logits.numel())
        threshold = torch.topk(logits, k).values[-1]
        logits[logits < threshold] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if 0 < params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # always keeps the first
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
