"""Real sim bridges for the pool tests: several processes on loopback, restartable on the same port."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import pytest

from tests.conftest import write_sim_model
from tests.support import ServerProcess, bridge_argv, wait_for

QWEN = "qwen-sim"
PHI = "phi-sim"
TINY = "tiny-sim"
LONG_REPLY = 1000  # what every sim model would say: 20 s at the test speed; short requests cap it
DECODE_TOK_S = "50"


class PoolBridge(ServerProcess):
    """A sim bridge that can be killed and started again on the same port, as a rebooted board would."""

    def restart(self) -> "PoolBridge":
        assert self.proc is None or self.proc.poll() is not None, "restart() needs a dead bridge"
        argv = self.argv + ["--port", str(self.port)]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.get_json("/health", timeout=2)[0] == 200

        wait_for(ready, timeout=60, interval=0.05, what=f"bridge to serve again on port {self.port}")
        return self

    def loaded(self) -> List[str]:
        """Models loaded on this bridge, from its own ``/api/ps``."""
        status, body = self.get_json("/api/ps")
        assert status == 200
        return sorted(m["name"] for m in body["models"])

    def health(self) -> dict:
        status, body = self.get_json("/health", timeout=5)
        assert status == 200
        return body

    def busy(self) -> int:
        return sum(m["busy"] for m in self.health()["models"])


@pytest.fixture(scope="session")
def pool_store(tmp_path_factory, default_model_dir) -> Path:
    """Three sim models sharing the default model's tokenizer, each with a long reply (requests that
    should be short pass ``max_new_tokens``)."""
    root = tmp_path_factory.mktemp("pool-models")
    for name in (QWEN, PHI, TINY):
        write_sim_model(root, name, default_model_dir, SIM_REPLY_TOKENS=LONG_REPLY, MAX_NEW_TOKENS=LONG_REPLY,
                        NUM_CTX=4096)
    return root


@pytest.fixture
def start_bridges(pool_store):
    """``start_bridges([args of bridge 1], [args of bridge 2], ...)`` starts them in parallel; all are
    stopped after the test."""
    started: List[PoolBridge] = []

    def start(*per_bridge: List[str]) -> List[PoolBridge]:
        bridges = [PoolBridge(bridge_argv(pool_store, "sim", "--sim-profile", "instant", "--sim-decode-tok-s",
                                          DECODE_TOK_S, "--log-level", "WARNING", *extra), startup_timeout=60)
                   for extra in per_bridge]
        started.extend(bridges)
        with ThreadPoolExecutor(len(bridges)) as ex:
            list(ex.map(lambda b: b.start(), bridges))
        return bridges

    yield start
    for bridge in started:
        bridge.kill()
        bridge.stop()
