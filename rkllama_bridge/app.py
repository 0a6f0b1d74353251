"""The Flask app factory of the bridge. Business logic lives in ``service``; routes translate shapes."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Optional

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from . import openapi as openapi_doc
from .errors import BridgeError, ClientGone
from .routes import admin, native, ollama, openai, rkllama
from .routes.common import ignored_params_header
from .service import BridgeService

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 2**20
OPEN_PATHS = ("/health",)  # liveness stays reachable for load balancers without the token


def create_app(service: BridgeService, *, token: Optional[str] = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               extra_blueprints=()) -> Flask:
    app = Flask("rkllama_bridge")
    app.config.update(BRIDGE_SERVICE=service, BRIDGE_STARTED=time.monotonic(), MAX_CONTENT_LENGTH=max_body_bytes,
                      JSON_SORT_KEYS=False)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    for module in (rkllama, ollama, openai, native, admin, openapi_doc):
        app.register_blueprint(module.bp)
    for bp in extra_blueprints:
        app.register_blueprint(bp)
    app.after_request(ignored_params_header)

    if token:
        expected = f"Bearer {token}".encode()

        @app.before_request
        def require_token():
            if request.path in OPEN_PATHS:
                return None
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise BridgeError("missing or wrong bearer token", status=401, code="unauthorized",
                                  headers={"WWW-Authenticate": "Bearer"})
            return None

    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError):
        if isinstance(exc, ClientGone):
            log.info("%s %s: %s", request.method, request.path, exc.message)
        elif exc.status >= 500:
            log.error("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return jsonify(exc.to_json()), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body larger than the limit of {max_body_bytes} bytes"
        return jsonify({"error": {"code": code, "message": message}}), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return jsonify({"error": {"code": "internal_error", "message": f"internal error: {type(exc).__name__}"}}), 500

    return app
