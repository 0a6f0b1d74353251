"""A Python failure inside the native callback must not take the process down (checked in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ..native.build import stub_env, write_stub_model
from ..support import REPO

SCRIPT = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from rkllama_bridge.rkllm import handle as handle_mod
    from rkllama_bridge.rkllm.runtime import RKLLMRuntime
    from rkllama_bridge.runtimes.base import GenerationFailed, GenerationParams, ModelSpec

    logging.basicConfig(level=logging.ERROR, stream=sys.stdout)
    model = Path(sys.argv[1])
    spec = ModelSpec(name="m", directory=model.parent, weights=model, num_ctx=512, eos_token_ids=[2],
                     vocab_size=100)
    handle = RKLLMRuntime().load(spec)

    original = handle_mod._Router._deliver
    def broken(self, run, result_ptr, state):
        raise RuntimeError("boom inside the ctypes callback")
    handle_mod._Router._deliver = broken
    try:
        handle.generate([1, 2], GenerationParams(max_new_tokens=50), lambda t: None)
        print("NO ERROR RAISED")
    except GenerationFailed as exc:
        print("FAILED CLEANLY:", exc)
    handle_mod._Router._deliver = original

    tokens = []
    handle.generate([1, 2], GenerationParams(max_new_tokens=3), tokens.append)
    handle.close()
    print("AFTERWARDS:", tokens)
""")


@pytest.mark.parametrize("abi", ["1.1", "1.3"])
def test_exception_in_the_native_callback_is_logged_and_fails_the_run(abi, tmp_path):
    model = write_stub_model(tmp_path / "m.rkllm", toolkit_version={"1.1": "1.1.4", "1.3": "1.3.0"}[abi])
    env = {"PATH": "/usr/bin:/bin", **stub_env(abi, [31, 32, 33, 34, 35, 36], delay_ms=1)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model)], env=env, capture_output=True, text=True,
                          check=False, timeout=60, cwd=str(REPO))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "boom inside the ctypes callback" in out  # logged with its traceback
    assert "FAILED CLEANLY:" in out and "the result callback failed" in out
    assert "AFTERWARDS: [31, 32, 33]" in out
