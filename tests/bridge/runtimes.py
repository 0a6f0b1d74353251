"""The runtimes the bridge's HTTP suite runs on, and how to start a bridge on each of them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Tuple

from rkllama_bridge.runtimes.sim import DEFAULT_REPLY

RKLLM_TEST_ABI = "1.3"  # every ABI is covered by tests/rkllm; the HTTP suite runs on the newest


def _rkllm_stub_available() -> bool:
    try:
        from rkllama_bridge.rkllm import runtime  # noqa: F401

        from ..native import build  # noqa: F401
    except ImportError:
        return False
    return shutil.which("gcc") is not None


RUNTIMES = ["sim"] + (["rkllm"] if _rkllm_stub_available() else [])


def runtime_options(runtime: str, tokenizer, record: Optional[Path] = None,
                    decode_tok_s: Optional[float] = None) -> Tuple[list, dict]:
    """(extra CLI args, env) for a bridge whose runtime answers DEFAULT_REPLY at ``decode_tok_s`` (None: at
    once); on the stub library every call is also logged to ``record``."""
    if runtime == "sim":
        args = ["--sim-profile", "instant"]
        if decode_tok_s:
            args += ["--sim-decode-tok-s", str(decode_tok_s)]
        return args, {}
    from ..native.build import stub_env

    delay_ms = int(1000 / decode_tok_s) if decode_tok_s else 0
    return [], stub_env(RKLLM_TEST_ABI, reply_ids=tokenizer.encode(DEFAULT_REPLY), delay_ms=delay_ms, record=record)
