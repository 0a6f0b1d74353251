"""The error tree every server answers with: an :class:`ApiError` carries its HTTP status, a stable
``code`` and a message, and becomes ``{"error": {"code", "message"}}`` (plus OpenAI's ``type`` and
``param`` on OpenAI routes)."""

from __future__ import annotations

from typing import Dict, Optional


class ApiError(Exception):
    """An error meant for the client. Subclasses fix ``status`` and ``code``; both can be overridden."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, status: Optional[int] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None, param: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.param = param

    def to_json(self, openai: bool = False) -> dict:
        return error_body(self.status, self.code, self.message, openai=openai, param=self.param)


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status: the client's fault or the server's."""
    if status == 401:
        return "authentication_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(status: int, code: str, message: str, *, openai: bool = False, param: Optional[str] = None) -> dict:
    """The JSON error shape; OpenAI routes add ``type`` and ``param`` as OpenAI's API does."""
    error: dict = {"code": code, "message": message}
    if openai:
        error.update(type=openai_error_type(status), param=param)
    return {"error": error}


def http_error_code(reason: Optional[str]) -> str:
    """A framework's reason phrase ("Method Not Allowed") as an error code ("method_not_allowed")."""
    return (reason or "error").lower().replace(" ", "_")


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_entity_too_large"


class TooManyRequests(ApiError):
    status = 429
    code = "queue_full"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than the limit of {limit} bytes")
