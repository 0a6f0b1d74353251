"""deploy/compose.yaml run for real, as processes on loopback (no container runtime here): every service's
command and environment from the file, with what a container would have mapped onto this machine (its
all-interfaces bind onto 127.0.0.1, its port onto an ephemeral one, its volumes onto directories, the
service names onto the addresses their processes listen on). One chat through the gateway, one bridge
killed, and the gateway's pool keeps serving from the other two."""

from __future__ import annotations

import re
import secrets
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import write_sim_model
from tests.support import ServerProcess, wait_for

from .compose import environment, load_compose

MODEL = "qwen-sim"
PROGRAMS = {"rkllama-bridge": [sys.executable, "-m", "rkllama_bridge"], "exo-rk": [sys.executable, "-m", "exo_rk"]}


class ComposeService:
    """One service of the compose file as a local process."""

    def __init__(self, name: str, spec: dict, root: Path):
        self.name, self.spec = name, spec
        self.root = root / name  # the container's own file system, for paths outside its volumes
        self.mounts = {}
        for volume in spec.get("volumes") or []:
            source, target = volume.split(":")[:2]
            self.mounts[target] = source
        ports = [str(p).split(":")[-1] for p in (spec.get("ports") or [])] + [str(p) for p in spec.get("expose", [])]
        (self.container_port,) = {int(p) for p in ports}
        health = " ".join(spec["healthcheck"]["test"])
        self.health_path = re.search(r"https?://[^/]+(/[\w/]*)", health).group(1)
        self.server = None

    def local_value(self, value: str, addresses: dict) -> str:
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value.startswith("/"):
            for target, source in self.mounts.items():
                if value == target or value.startswith(target + "/"):
                    return source + value[len(target):]
            return str(self.root / value.lstrip("/"))

        def address(m: re.Match) -> str:
            return addresses.get((m.group(1), int(m.group(2))), m.group(0))

        return re.sub(r"\b([a-z][\w-]*):(\d+)\b", address, value)

    def start(self, addresses: dict) -> ServerProcess:
        program, *args = self.spec["command"]
        env = {k: self.local_value(v, addresses) for k, v in environment(self.spec).items()}
        self.server = ServerProcess([*PROGRAMS[program], *args, "--log-level", "WARNING"], env=env,
                                    startup_timeout=60, health_path=self.health_path)
        return self.server.start()


def _start_order(services: dict) -> list:
    """Services in waves: each wave depends only on the waves before it (``depends_on``)."""
    waves, started = [], set()
    while len(started) < len(services):
        wave = sorted(n for n, s in services.items() if n not in started and set(s.get("depends_on") or ()) <= started)
        assert wave, "depends_on has a cycle"
        waves.append(wave)
        started.update(wave)
    return waves


@pytest.fixture
def topology(tmp_path, default_model_dir):
    store = tmp_path / "models"
    write_sim_model(store, MODEL, default_model_dir)
    env = {"RKLLAMA_BRIDGE_TOKEN": secrets.token_urlsafe(16), "BRIDGE_SIM_PROFILE": "instant",
           "EXO_RK_MODELS": str(store)}
    services = {name: ComposeService(name, spec, tmp_path / "fs")
                for name, spec in load_compose(env)["services"].items()}
    addresses: dict = {}
    try:
        for wave in _start_order({n: s.spec for n, s in services.items()}):
            with ThreadPoolExecutor(len(wave)) as pool:
                list(pool.map(lambda n: services[n].start(addresses), wave))
            for name in wave:
                addresses[(name, services[name].container_port)] = f"127.0.0.1:{services[name].server.port}"
        yield services
    finally:
        for service in services.values():
            if service.server is not None:
                service.server.stop()


def _chat(gateway: ServerProcess, timeout: float = 30) -> tuple:
    return gateway.post_json("/v1/chat/completions", {"model": MODEL, "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": "Hello there."}]},
                             timeout=timeout)


def test_gateway_and_three_bridges_from_the_compose_file_survive_a_dead_bridge(topology):
    bridges = [s for s in topology.values() if s.spec["command"][0] == "rkllama-bridge"]
    gateway = topology["gateway"].server
    assert len(bridges) == 3 and all(b.server.proc.poll() is None for b in bridges)
    # the bridges run what the file says: the sim runtime, behind the token the gateway sends
    assert all(b.server.get_json("/api/tags")[0] == 401 for b in bridges)

    status, body = _chat(gateway)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]

    victim = bridges[0].server
    victim.kill(signal.SIGKILL)
    assert victim.proc.returncode == -signal.SIGKILL
    wait_for(lambda: _chat(gateway, timeout=10)[0] == 200, timeout=20, what="a chat after the bridge died")
    for _ in range(3):
        status, body = _chat(gateway)
        assert status == 200 and body["choices"][0]["message"]["content"], body
    metrics = gateway.request("GET", "/metrics")[2].decode()
    up = re.findall(r'^exo_rk_pool_bridge_up\{bridge="([^"]+)"\} (\S+)$', metrics, re.M)
    assert sorted(float(v) for _, v in up) == [0.0, 1.0, 1.0], metrics
    assert dict(up)[victim.url] == "0.0"
