"""The gateway's aiohttp runner: requests that aiohttp's HTTP parser refuses before any handler or
middleware runs (a duplicate Content-Length, Content-Length with Transfer-Encoding, an oversized header, a
bad request line) are answered in the gateway's JSON error shape instead of aiohttp's text/plain page.

aiohttp builds those answers in ``RequestHandler.handle_error``; its ``Server`` makes one
``RequestHandler`` per connection, so the runner hands out a ``Server`` that makes ``JsonRefusalHandler``s.
"""

from __future__ import annotations

from typing import Optional

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from rk_common.aiohttp_http import error_response
from rk_common.errors import ApiError


def refusal(status: int, exc: Optional[BaseException]) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp refused: the parser's own words about what was wrong
    with the request, which say nothing about the server."""
    if status >= 500 or not isinstance(exc, HttpProcessingError):
        return 500, "internal_error", "the gateway failed on this request"
    if isinstance(exc, LineTooLong):
        return 431, "headers_too_large", "the request line or a header is longer than this server accepts"
    # the parser's first line says what is wrong; the next ones echo the offending bytes
    message = (exc.message or "").strip().split("\n", 1)[0].rstrip(": ")[:200] or "malformed HTTP request"
    if isinstance(exc, BadStatusLine):
        return 400, "bad_request_line", message
    return 400, "bad_http_request", message


class JsonRefusalHandler(RequestHandler):
    """aiohttp's connection handler with JSON refusals (logging and closing stay aiohttp's)."""

    def handle_error(self, request, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a reply already started
        status, code, text = refusal(status, exc)
        response = error_response(ApiError(text, status=status, code=code))
        response.force_close()
        return response


class JsonRefusalServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonRefusalHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser refusals in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, one overridden method: the connections it makes are JsonRefusalHandlers.
        server.__class__ = JsonRefusalServer
        return server
