"""The shared HTTP layer on a Flask app: request ids, bearer auth, the body limit and JSON errors for
everything (the app's :class:`~rk_common.errors.ApiError`, Flask's own 404/405/413, unexpected failures)."""

from __future__ import annotations

import logging
from typing import Callable, Optional

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import request_ids
from .auth import BearerAuth
from .errors import ApiError, body_too_large, error_body, http_error_code

log = logging.getLogger(__name__)


def _never(path: str) -> bool:
    return False


def error_response(exc: ApiError, openai: bool = False):
    """``exc`` as a Flask response tuple (JSON body, status, headers)."""
    return jsonify(exc.to_json(openai=openai)), exc.status, exc.headers


def _log_error(exc: ApiError) -> None:
    where = f"{request.method} {request.path} [{request_ids.current()}]"
    if exc.status >= 500:
        log.error("%s -> %d %s: %s", where, exc.status, exc.code, exc.message)
    else:
        log.info("%s -> %d %s: %s", where, exc.status, exc.code, exc.message)


def install(app: Flask, *, auth: Optional[BearerAuth] = None, max_body_bytes: Optional[int] = None,
            openai_path: Callable[[str], bool] = _never) -> None:
    """Wire the shared layer into ``app``. ``openai_path(path)`` tells which routes answer OpenAI-typed
    errors (with ``type`` and ``param``)."""
    if max_body_bytes is not None:
        app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @app.before_request
    def start_request():
        rid = request_ids.request_id_for(request.headers.get(request_ids.HEADER))
        g.rk_request_id, g.rk_request_token = rid, request_ids.bind(rid)
        refusal = auth.refusal(request.path, request.headers.get("Authorization")) if auth else None
        if refusal is not None:
            raise refusal

    @app.after_request
    def tag_response(response):
        response.headers[request_ids.HEADER] = g.get("rk_request_id") or request_ids.current()
        return response

    @app.teardown_request
    def end_request(_exc):
        token = g.pop("rk_request_token", None)
        if token is not None:
            request_ids.unbind(token)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        _log_error(exc)
        return error_response(exc, openai_path(request.path))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            err = body_too_large(limit) if limit else ApiError(exc.description or "too large", status=413,
                                                                code="request_entity_too_large")
        else:
            err = ApiError(exc.description or exc.name, status=exc.code or 500, code=http_error_code(exc.name))
        allowed = exc.get_headers()
        err.headers.update({k: v for k, v in allowed if k in ("Allow", "WWW-Authenticate", "Retry-After")})
        return error_response(err, openai_path(request.path))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s [%s] failed", request.method, request.path, request_ids.current())
        body = error_body(500, "internal_error", f"internal error: {type(exc).__name__}",
                          openai=openai_path(request.path))
        return jsonify(body), 500
