"""What the gateway's route modules share: the app keys and a bridge failure as the API error to answer.

Messages are written for the client: a bridge's URL or an exception's repr never reaches it. The detail is
logged under the request's id, which the client gets in ``X-Request-Id`` and in every 5xx message.
"""

from __future__ import annotations

import logging

from aiohttp import web

from exo_rk import errors
from exo_rk.engine import RKLLMInferenceEngine
from rk_common.aiohttp_http import REQUEST_ID_KEY
from rk_common.errors import ApiError

log = logging.getLogger("exo_rk.gateway")

class Lifecycle:
    """The gateway's stop state: ``stopping`` turns new chats away (503), ``cut`` ends running replies at
    their next token (finish "shutdown"); ``active`` counts the chats in progress."""

    def __init__(self) -> None:
        self.stopping = False
        self.cut = False
        self.active = 0


ENGINE_KEY = web.AppKey("engine", RKLLMInferenceEngine)
DEFAULT_MODEL_KEY = web.AppKey("default_model", str)
LIFECYCLE_KEY = web.AppKey("lifecycle", Lifecycle)


def request_id(request: web.Request) -> str:
    """The id the shared HTTP layer gave this request."""
    return request.get(REQUEST_ID_KEY) or "-"


def bridge_error(exc: errors.BridgeError, rid: str) -> ApiError:
    """What the client is told when a bridge could not serve request ``rid``; the full story (URL,
    cause) goes to the log."""
    log.warning("request %s: %s: %s%s", rid, type(exc).__name__, exc,
                f" (cause: {exc.__cause__!r})" if exc.__cause__ is not None else "")
    if isinstance(exc, errors.ModelNotFound):
        return ApiError(exc.message, status=404, code=exc.code or "model_not_found")
    if isinstance(exc, errors.BridgeBusy):
        return ApiError("every bridge that serves this model is busy; retry after the time given in Retry-After",
                        status=429, code="rate_limit_exceeded",
                        headers={"Retry-After": str(max(1, int(exc.retry_after or 1)))})
    if isinstance(exc, errors.BadBridgeRequest):  # the bridge's own validation message, meant for clients
        return ApiError(exc.message, status=400, code=exc.code or "bad_request")
    if isinstance(exc, errors.BridgeUnavailable):
        return ApiError(f"{_unavailable_message(exc)} (request id {rid})", status=503, code="bridge_unavailable")
    if isinstance(exc, errors.BridgeAuthError):
        return ApiError(f"a bridge refused this gateway's token; the gateway's operator must fix its "
                        f"configuration (request id {rid})", status=502, code="bridge_auth_failed")
    return ApiError(f"a bridge answered something unexpected (request id {rid})", status=502,
                    code="bridge_error")


def _unavailable_message(exc: errors.BridgeUnavailable) -> str:
    from exo_rk.pool import DeadlineExceeded, NoBridgeAvailable

    if isinstance(exc, NoBridgeAvailable):  # the pool's own summary: counts, never addresses
        return exc.message
    if isinstance(exc, DeadlineExceeded):
        return "no bridge answered within the request's deadline"
    return "the bridge cannot be reached right now; retry shortly"
