"""The core install alone serves. A fresh venv gets the project's wheel with its core requirements only (what
``pip install exo-rk`` installs: ``install_requires``, no extra), torch and transformers are not importable
there, and from that venv's own console scripts a bridge on the rkllm runtime (the stub librkllmrt), a bridge
on the sim runtime and a gateway over both answer chats."""

from __future__ import annotations

import importlib.util
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rkllama_bridge.runtimes.sim import DEFAULT_REPLY
from tests.conftest import write_sim_model
from tests.support import REPO, ServerProcess, wait_for

from .test_roles import HOST_ONLY

MODEL = "qwen-sim"
STUB_REPLY = "Hello from the board."
DISTRIBUTION = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "rk_common", "rkllama_bridge", "exo_rk",
                "image_engine")


def _run(*argv, timeout: float = 120) -> str:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv[:6]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture
def core_venv(tmp_path) -> Path:
    """A venv holding the project's wheel and its core requirements (from pip's cache when it is warm)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel without build isolation needs setuptools in the test venv")
    src = tmp_path / "src"
    for name in DISTRIBUTION:  # a copy, so the build writes nothing into the checkout
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(source, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         tmp_path / "wheels", src)
    (wheel,) = (tmp_path / "wheels").glob("exo_rk-*.whl")
    venv = tmp_path / "core"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    # this venv's pip installs into the new one: no pip of its own to bootstrap there
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-compile",
         wheel, timeout=300)
    return venv


def test_the_core_install_serves_rkllm_and_sim_bridges_behind_a_gateway(core_venv, tmp_path, default_model_dir,
                                                                         default_tokenizer):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the stub librkllmrt for the rkllm runtime")
    from ..native.build import stub_env

    python = core_venv / "bin" / "python"
    probe = f"import importlib.util as u; print([m for m in {HOST_ONLY!r} if u.find_spec(m) is not None])"
    assert _run(python, "-I", "-c", probe).strip() == "[]"  # -I: nothing from the checkout or the user site

    store = tmp_path / "models"
    write_sim_model(store, MODEL, default_model_dir)
    token = secrets.token_urlsafe(16)
    # console scripts put their own bin/ first on sys.path, not the working directory (the checkout)
    isolated = {"PYTHONPATH": "", "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}
    common = ["serve", "--models", str(store), "--host", "127.0.0.1", "--token", token, "--preload", MODEL,
              "--log-level", "WARNING"]
    bridges = [
        ServerProcess([core_venv / "bin" / "rkllama-bridge", *common, "--runtime", "rkllm"], startup_timeout=60,
                      env={**isolated, **stub_env("1.3", reply_ids=default_tokenizer.encode(STUB_REPLY))},
                      health_path="/health/ready", token=token),
        ServerProcess([core_venv / "bin" / "rkllama-bridge", *common, "--runtime", "sim", "--sim-profile", "instant"],
                      env=isolated, startup_timeout=60, health_path="/health/ready", token=token),
    ]
    started = []
    try:
        for bridge in bridges:
            started.append(bridge.start())
        env = {**isolated, "RKLLM_SERVERS": ",".join(b.url for b in bridges), "RKLLM_TOKEN": token,
               "EXO_HOME": str(tmp_path / "exo-home"), "RKLLM_HEALTH_INTERVAL": "0.2"}
        gateway = ServerProcess([core_venv / "bin" / "exo-rk", "serve", "--host", "127.0.0.1", "--log-level",
                                 "WARNING"], env=env, startup_timeout=60, health_path="/health/ready")
        started.append(gateway.start())
        for server in started:  # each one runs on the venv's interpreter
            assert Path(f"/proc/{server.proc.pid}/exe").resolve() == python.resolve()

        replies = []

        def chat_on_both() -> bool:
            status, body = gateway.post_json("/v1/chat/completions", {
                "model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello there."}]})
            assert status == 200, body
            replies.append(body["choices"][0]["message"]["content"])
            metrics = gateway.request("GET", "/metrics")[2].decode()
            served = re.findall(r'^exo_rk_pool_requests_total\{bridge="[^"]+"\} (\S+)$', metrics, re.M)
            return len(served) == 2 and all(float(n) >= 1 for n in served)

        wait_for(chat_on_both, timeout=30, interval=0.0, what="a chat served by each bridge")
        # without the images extra the image routes are off, and the bridge says why
        assert all("image routes off" in b.log_tail() and "exo-rk[images]" in b.log_tail() for b in bridges)
        assert bridges[0].get_json("/image/superres")[0] == 404
        assert STUB_REPLY in replies  # the rkllm runtime on the stub
        assert any(r and DEFAULT_REPLY.startswith(r[:20]) for r in replies)  # the sim runtime
    finally:
        for server in started:
            server.stop()
