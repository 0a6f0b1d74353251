"""LLM runtimes of the bridge, created by name. Heavy or native ones are imported only when chosen."""

from __future__ import annotations

from typing import Callable, Optional

from .base import Runtime, RuntimeUnavailable

RUNTIME_NAMES = ("rkllm", "host", "sim")


def create_runtime(name: str, *, sim_profile: Optional[str] = None, sim_overrides: Optional[dict] = None,
                   tokenizer_for: Optional[Callable] = None, threads: Optional[int] = None,
                   rkllm_lib: Optional[str] = None, rkllm_abi: Optional[str] = None,
                   rkllm_stall_timeout_s: float = 240.0) -> Runtime:
    if name == "sim":
        from .sim import DEFAULT_PROFILE, SimRuntime

        return SimRuntime(sim_profile or DEFAULT_PROFILE, tokenizer_for=tokenizer_for, **(sim_overrides or {}))
    if name == "host":
        from .host import HostRuntime

        return HostRuntime(threads=threads)
    if name == "rkllm":
        try:
            from ..rkllm.runtime import RKLLMRuntime
        except ImportError as exc:
            raise RuntimeUnavailable(f"the rkllm runtime is not available: {exc}") from exc
        return RKLLMRuntime(lib_path=rkllm_lib, abi=rkllm_abi, stall_timeout_s=rkllm_stall_timeout_s)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIME_NAMES)}")
