"""LLM runtimes of the bridge, created by name. Heavy or native ones are imported only when chosen."""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

from .base import Runtime, RuntimeUnavailable

RUNTIME_NAMES = ("rkllm", "host", "sim")
#: what the host runtime imports, all from the ``host`` extra (the core install has none of them)
HOST_MODULES = ("torch", "transformers", "gguf", "accelerate")
HOST_EXTRA_HINT = "pip install 'exo-rk[host]'"


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_host_extra(what: str = "the host runtime") -> None:
    """Raise RuntimeUnavailable with a one-line hint when the ``host`` extra is not installed."""
    missing = [name for name in HOST_MODULES if _absent(name)]
    if missing:
        raise RuntimeUnavailable(f"{what} needs the 'host' extra ({', '.join(missing)} not installed): "
                                 f"{HOST_EXTRA_HINT}")


def create_runtime(name: str, *, sim_profile: Optional[str] = None, sim_overrides: Optional[dict] = None,
                   tokenizer_for: Optional[Callable] = None, threads: Optional[int] = None,
                   rkllm_lib: Optional[str] = None, rkllm_abi: Optional[str] = None,
                   rkllm_stall_timeout_s: float = 240.0) -> Runtime:
    if name == "sim":
        from .sim import DEFAULT_PROFILE, SimRuntime

        return SimRuntime(sim_profile or DEFAULT_PROFILE, tokenizer_for=tokenizer_for, **(sim_overrides or {}))
    if name == "host":
        require_host_extra()
        from .host import HostRuntime

        return HostRuntime(threads=threads)
    if name == "rkllm":
        try:
            from ..rkllm.runtime import RKLLMRuntime
        except ImportError as exc:
            raise RuntimeUnavailable(f"the rkllm runtime is not available: {exc}") from exc
        return RKLLMRuntime(lib_path=rkllm_lib, abi=rkllm_abi, stall_timeout_s=rkllm_stall_timeout_s)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIME_NAMES)}")
