"""The shared HTTP layer on an aiohttp app: request ids, bearer auth and JSON errors for everything (the
handlers' :class:`~rk_common.errors.ApiError`, aiohttp's own 404/405/413, unexpected failures). Errors
are OpenAI-typed (``type``, ``param``): the gateway is an OpenAI surface."""

from __future__ import annotations

import logging
from typing import List, Optional

from aiohttp import web

from . import request_ids
from .auth import BearerAuth
from .errors import ApiError, body_too_large, error_body, http_error_code

log = logging.getLogger(__name__)
REQUEST_ID_KEY = "rk_request_id"


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.to_json(openai=True), status=exc.status, headers=exc.headers or None)


def _from_http_exception(exc: web.HTTPException, max_body_bytes: Optional[int]) -> ApiError:
    if exc.status == 413 and max_body_bytes:
        err = body_too_large(max_body_bytes)
    else:
        err = ApiError(exc.text or exc.reason, status=exc.status, code=http_error_code(exc.reason))
    err.headers.update({k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")})
    return err


def middlewares(auth: Optional[BearerAuth] = None, max_body_bytes: Optional[int] = None) -> List:
    """The middlewares to give ``web.Application``; pair them with :func:`install_signals`."""

    @web.middleware
    async def shared_layer(request: web.Request, handler) -> web.StreamResponse:
        rid = request_ids.request_id_for(request.headers.get(request_ids.HEADER))
        request[REQUEST_ID_KEY] = rid
        token = request_ids.bind(rid)
        try:
            refusal = auth.refusal(request.path, request.headers.get("Authorization")) if auth else None
            if refusal is not None:
                raise refusal
            return await handler(request)
        except ApiError as exc:
            level = logging.ERROR if exc.status >= 500 else logging.INFO
            log.log(level, "%s %s [%s] -> %d %s: %s", request.method, request.path, rid, exc.status, exc.code,
                    exc.message)
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(_from_http_exception(exc, max_body_bytes))
        except Exception as exc:  # noqa: BLE001 - any failure still answers the JSON shape
            log.exception("%s %s [%s] failed", request.method, request.path, rid)
            body = error_body(500, "internal_error", f"internal error: {type(exc).__name__}", openai=True)
            return web.json_response(body, status=500)
        finally:
            request_ids.unbind(token)

    return [shared_layer]


def install_signals(app: web.Application) -> None:
    """Every response, streamed ones included, carries the request's ``X-Request-Id``."""

    async def tag(request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(REQUEST_ID_KEY)
        if rid:
            response.headers[request_ids.HEADER] = rid

    app.on_response_prepare.append(tag)
