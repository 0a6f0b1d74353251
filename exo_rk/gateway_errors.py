"""The gateway's error answers, in OpenAI's shape: ``{"error": {"code", "message", "type"}}``.

- ``type`` follows the status as OpenAI's API does (``invalid_request_error``, ``authentication_error``,
  ``rate_limit_error`` for 429, ``service_unavailable_error`` for 503, ``server_error`` for other 5xx).
- Every 429 and 503 carries ``Retry-After``.
- Messages are written for the client: a bridge's URL, an exception's repr or a traceback never reach it.
  The detail goes to the log under the request's id, which the client sees in ``X-Request-Id`` and in
  every 5xx message.
"""

from __future__ import annotations

import logging
import uuid
from typing import Optional

from aiohttp import web

from exo_rk import errors

log = logging.getLogger("exo_rk.gateway")

REQUEST_ID_KEY = "exo_rk_request_id"
REQUEST_ID_HEADER = "X-Request-Id"
RETRY_AFTER_S = 1  # when nothing better is known: bridges come back or free up within seconds

_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
          503: "service_unavailable_error"}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def request_id(request: web.BaseRequest) -> str:
    """This request's id (made on first use); it names the request in the log and in error answers."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is None:
        rid = request[REQUEST_ID_KEY] = uuid.uuid4().hex
    return rid


def error_response(status: int, code: str, message: str, headers: Optional[dict] = None) -> web.Response:
    """The JSON error answer; 429 and 503 always say when to retry."""
    headers = dict(headers or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return web.json_response({"error": {"code": code, "message": message, "type": error_type(status)}},
                             status=status, headers=headers)


def _retry_after(exc: errors.BridgeBusy) -> dict:
    return {"Retry-After": str(max(1, int(exc.retry_after or RETRY_AFTER_S)))}


def bridge_error_response(exc: errors.BridgeError, rid: str) -> web.Response:
    """A bridge failure as the client should see it; the full story (URL, cause) is logged under ``rid``."""
    log.warning("request %s: %s: %s%s", rid, type(exc).__name__, exc,
                f" (cause: {exc.__cause__!r})" if exc.__cause__ is not None else "")
    if isinstance(exc, errors.ModelNotFound):
        return error_response(404, exc.code or "model_not_found", exc.message)
    if isinstance(exc, errors.BridgeBusy):
        return error_response(429, "rate_limit_exceeded", "every bridge that serves this model is busy; "
                              "retry after the time given in Retry-After", headers=_retry_after(exc))
    if isinstance(exc, errors.BadBridgeRequest):  # the bridge's own validation message, meant for clients
        return error_response(400, exc.code or "bad_request", exc.message)
    if isinstance(exc, errors.BridgeUnavailable):
        return error_response(503, "bridge_unavailable", f"{_unavailable_message(exc)} (request id {rid})")
    if isinstance(exc, errors.BridgeAuthError):
        return error_response(502, "bridge_auth_failed", f"a bridge refused this gateway's token; the "
                              f"gateway's operator must fix its configuration (request id {rid})")
    return error_response(502, "bridge_error", f"a bridge answered something unexpected (request id {rid})")


def _unavailable_message(exc: errors.BridgeUnavailable) -> str:
    from exo_rk.pool import DeadlineExceeded, NoBridgeAvailable

    if isinstance(exc, NoBridgeAvailable):  # the pool's own summary: counts, never addresses
        return exc.message
    if isinstance(exc, DeadlineExceeded):
        return "no bridge answered within the request's deadline"
    return "the bridge cannot be reached right now; retry shortly"


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) and any unexpected failure answer the same JSON shape as
    the handlers' errors; an unexpected failure is logged with its traceback under the request id."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return error_response(exc.status, code, exc.text or exc.reason, headers=headers)
    except Exception:  # noqa: BLE001 - the client gets a JSON 500, the log gets the traceback
        rid = request_id(request)
        log.exception("request %s (%s %s) failed", rid, request.method, request.path)
        return error_response(500, "internal_error", f"the gateway failed on this request (request id {rid})")


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer names its request id."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)
