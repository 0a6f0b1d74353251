"""Each app's routes and its OpenAPI document list the same (method, path) pairs, and the documents are
valid OpenAPI 3."""

from __future__ import annotations

import re

import pytest
import schemathesis

from exo_rk import openapi as gateway_openapi
from exo_rk.gateway import create_app as create_gateway
from image_engine import openapi as image_openapi
from image_engine.app import close_app, mount_image_routes
from image_engine.app import create_app as create_image_app
from image_engine.config import EngineConfig, SRConfig
from rkllama_bridge import openapi as bridge_openapi
from rkllama_bridge.app import create_app as create_bridge

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def spec_routes(spec: dict) -> set:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def flask_routes(app) -> set:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out |= {(m, path) for m in rule.methods - IGNORED_METHODS}
    return out


def test_bridge_routes_match_its_document():
    app = create_bridge(None)  # the service is only looked up per request
    assert flask_routes(app) == spec_routes(bridge_openapi.build_spec())


def test_bridge_with_image_routes_mounted_matches_its_document(monkeypatch, tmp_path):
    monkeypatch.setenv("OUTPUTS_DIR", str(tmp_path))
    app = create_bridge(None)
    mount_image_routes(app, EngineConfig(sr=SRConfig(num_workers=1)))
    try:
        assert flask_routes(app) == spec_routes(bridge_openapi.build_spec(images=True))
    finally:
        close_app(app)


def test_image_service_routes_match_its_document(monkeypatch, tmp_path):
    monkeypatch.setenv("OUTPUTS_DIR", str(tmp_path))
    app = create_image_app(EngineConfig(sr=SRConfig(num_workers=1)))
    try:
        assert flask_routes(app) == spec_routes(image_openapi.build_spec())
    finally:
        close_app(app)


def test_gateway_routes_match_its_document():
    app = create_gateway(None, "any-model")
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method not in IGNORED_METHODS}
    assert routes == spec_routes(gateway_openapi.build_spec())


@pytest.mark.parametrize("module", [bridge_openapi, image_openapi, gateway_openapi], ids=["bridge", "image",
                                                                                         "gateway"])
def test_documents_are_valid_openapi(module):
    spec = module.build_spec()
    schemathesis.openapi.from_dict(spec).validate()  # against the OpenAPI 3.0 meta-schema
    open_ops = [(m, p) for p, ops in spec["paths"].items() for m, op in ops.items() if op["security"] == []]
    assert ("get", "/health") in open_ops and set(open_ops) <= {("get", "/health"), ("get", "/health/ready")}
