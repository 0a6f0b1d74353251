"""What the gateway's route modules share: the app keys and a bridge failure as the API error to answer."""

from __future__ import annotations

from aiohttp import web

from exo_rk import errors
from exo_rk.engine import RKLLMInferenceEngine
from rk_common.errors import ApiError

ENGINE_KEY = web.AppKey("engine", RKLLMInferenceEngine)
DEFAULT_MODEL_KEY = web.AppKey("default_model", str)


def bridge_error(exc: errors.BridgeError) -> ApiError:
    """What the client is told when a bridge could not serve its request."""
    if isinstance(exc, errors.ModelNotFound):
        return ApiError(str(exc), status=404, code=exc.code or "model_not_found")
    if isinstance(exc, errors.BridgeBusy):
        return ApiError(str(exc), status=429, code="bridge_busy",
                        headers={"Retry-After": str(int(exc.retry_after or 1))})
    if isinstance(exc, errors.BadBridgeRequest):
        return ApiError(str(exc), status=400, code=exc.code or "bad_request")
    if isinstance(exc, errors.BridgeUnavailable):
        return ApiError(str(exc), status=503, code="bridge_unavailable")
    return ApiError(str(exc), status=502, code=exc.code or "bridge_error")
