"""The Flask app of ``image-engine serve``: services, their blueprints, JSON errors and ``/health``."""

from __future__ import annotations

import logging
from dataclasses import replace

from flask import Flask, jsonify

from rk_common import flask_http
from rk_common.auth import bearer_auth

from .config import EngineConfig
from .errors import ImageEngineError
from .generate_service import GenerateService
from .openapi import create_openapi_blueprint
from .routes_generate import create_generate_blueprint
from .routes_sr import SRService, create_sr_blueprint, error_response

log = logging.getLogger(__name__)

SERVICES_KEY = "image_engine.services"


def register_service(app: Flask, name: str, service) -> None:
    """Attach a service: its ``stats()`` shows under ``name`` in ``/health``; ``close()`` runs at exit."""
    app.extensions.setdefault(SERVICES_KEY, {})[name] = service


def close_app(app: Flask) -> None:
    """Close every registered service (cancelling their jobs), in reverse order of registration."""
    for name, service in reversed(list(app.extensions.get(SERVICES_KEY, {}).items())):
        try:
            service.close()
        except Exception:  # noqa: BLE001 - one failing service must not keep the others open
            log.exception("closing %s failed", name)


def create_app(config: EngineConfig) -> Flask:
    """Build the app; raises :class:`~image_engine.errors.RuntimeFailure` if a model cannot be loaded."""
    app = Flask("image_engine")
    app.config["ENGINE_CONFIG"] = config
    flask_http.install(app, auth=bearer_auth(config.token), max_body_bytes=config.max_body_bytes)
    app.register_blueprint(create_openapi_blueprint())

    sr = SRService(config.sr)
    register_service(app, "sr", sr)
    app.register_blueprint(create_sr_blueprint(sr))

    generate = GenerateService(config.generate, sr=sr)
    register_service(app, "generate", generate)
    app.register_blueprint(create_generate_blueprint(generate))

    @app.get("/health")
    def health():
        services = app.extensions.get(SERVICES_KEY, {})
        return jsonify({"status": "ok", **{name: s.stats() for name, s in services.items()}})

    return app


def mount_image_routes(app: Flask, config: EngineConfig, prefix: str = "/image", npu_gate=None) -> None:
    """Mount the super-resolution and text-to-image routes into another Flask app (the bridge) under
    ``prefix`` (the bridge already answers rkllama's own ``POST /generate``). Their services are closed by
    :func:`close_app`. The host app keeps its own auth and error handlers; image errors answer as here.
    ``npu_gate`` (a context-manager factory, the bridge's NPU arbiter) is entered around every model call:
    each SR tile and each LCM component call takes its turn."""
    app.register_error_handler(ImageEngineError, error_response)
    sr = SRService(replace(config.sr, npu_gate=npu_gate))
    register_service(app, "sr", sr)
    app.register_blueprint(create_sr_blueprint(sr), url_prefix=prefix)
    generate = GenerateService(replace(config.generate, npu_gate=npu_gate), sr=sr)
    register_service(app, "generate", generate)
    app.register_blueprint(create_generate_blueprint(generate), url_prefix=prefix)
