"""Install by role: the core packages import without the host extra's libraries, and choosing the host
runtime without that extra is a one-line error that names it."""

from __future__ import annotations

import json
import subprocess
import sys

from ..support import REPO

HOST_ONLY = ("torch", "transformers", "accelerate", "gguf")
# What a board's bridge and an exo node or gateway import to serve (the host runtime is imported lazily).
CORE_MODULES = ("rk_common", "rk_common.openai_chat", "rk_common.reply_shaping", "rk_common.tool_calls",
                "rkllama_bridge", "rkllama_bridge.cli", "rkllama_bridge.server", "rkllama_bridge.app",
                "rkllama_bridge.runtimes.sim", "rkllama_bridge.rkllm.runtime", "rkllama_bridge.doctor",
                "rkllama_bridge.tune", "rkllama_bridge.bench",
                "exo_rk", "exo_rk.cli", "exo_rk.engine", "exo_rk.gateway", "exo_rk.pool", "exo_rk.run",
                "exo_rk.registration")


def test_serving_modules_import_no_host_extra_library():
    code = ("import importlib, json, sys\n"
            f"for name in {CORE_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HOST_ONLY!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _serve_without_host_extra(*args: str) -> subprocess.CompletedProcess:
    # A None entry in sys.modules is how an uninstalled module looks to import and find_spec alike.
    code = ("import sys\n"
            f"for name in {HOST_ONLY!r}:\n"
            "    sys.modules[name] = None\n"
            "from rkllama_bridge.cli import main\n"
            f"sys.exit(main(['serve', '--port', '0', *{list(args)!r}]))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_host_runtime_without_the_extra_is_a_one_line_error(tmp_path):
    out = _serve_without_host_extra("--runtime", "host", "--models", str(tmp_path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if " INFO " not in line and line.strip()]
    assert len(errors) == 1, out.stderr  # the one line, after the start-up log
    assert errors[0].startswith("rkllama-bridge: ") and "host runtime" in errors[0]
    assert errors[0].endswith("pip install 'exo-rk[host]'")


def test_default_model_without_the_extra_names_it():
    out = _serve_without_host_extra("--runtime", "sim")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pip install 'exo-rk[host]'" in out.stderr and "--models" in out.stderr
