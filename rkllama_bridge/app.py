"""The Flask app factory of the bridge. Business logic lives in ``service``; routes translate shapes; the
shared HTTP layer (:mod:`rk_common.flask_http`) answers auth, limits, request ids and errors."""

from __future__ import annotations

import time
from typing import Optional

from flask import Flask

from rk_common import flask_http
from rk_common.auth import bearer_auth

from . import openapi as openapi_doc
from .routes import admin, native, ollama, openai, rkllama
from .routes.common import ignored_params_header
from .service import BridgeService

DEFAULT_MAX_BODY = 8 * 2**20
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")  # errors there are OpenAI-typed


def create_app(service: BridgeService, *, token: Optional[str] = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               extra_blueprints=()) -> Flask:
    app = Flask("rkllama_bridge")
    app.config.update(BRIDGE_SERVICE=service, BRIDGE_STARTED=time.monotonic(), JSON_SORT_KEYS=False)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    for module in (rkllama, ollama, openai, native, admin, openapi_doc):
        app.register_blueprint(module.bp)
    for bp in extra_blueprints:
        app.register_blueprint(bp)
    app.after_request(ignored_params_header)
    flask_http.install(app, auth=bearer_auth(token), max_body_bytes=max_body_bytes,
                       openai_path=OPENAI_PATHS.__contains__)
    return app
