"""The KServe manifests in deploy/kserve: well-formed, consistent with each other, and their container
command is one the real ``image-engine`` CLI accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from image_engine.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kserve"


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    assert len(docs) == 1
    return docs[0]


def test_runtime_and_service_agree():
    runtime, service = _load("servingruntime.yaml"), _load("inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert service["spec"]["predictor"]["nodeSelector"] == runtime["spec"]["nodeSelector"]


def test_container_command_is_accepted_by_the_cli():
    container = _load("servingruntime.yaml")["spec"]["containers"][0]
    assert container["command"] == ["image-engine"]
    args = [a.replace("{{.Name}}", "lcm-dreamshaper") for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "kserve" and parsed.model_root == Path("/mnt/models")
    port = container["ports"][0]["containerPort"]
    assert parsed.port == port == container["readinessProbe"]["httpGet"]["port"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in _load("servingruntime.yaml")["spec"]["volumes"]}
    assert mounts == volumes and "/dev/rknpu" in mounts.values()
