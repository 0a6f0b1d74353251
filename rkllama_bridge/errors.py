"""The bridge's exception tree. Every error that reaches a client is one of these, as JSON
``{"error": {"code": ..., "message": ...}}`` with ``status`` as the HTTP status."""

from __future__ import annotations

from typing import Optional


class BridgeError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, status: Optional[int] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(BridgeError):
    status = 400
    code = "bad_request"


class Unauthorized(BridgeError):
    status = 401
    code = "unauthorized"


class ModelNotFound(BridgeError):
    status = 404
    code = "model_not_found"


class QueueFull(BridgeError):
    status = 429
    code = "queue_full"


class ContextOverflow(BadRequest):
    code = "context_length_exceeded"


class ClientGone(BridgeError):
    """The client disconnected while its request waited or ran; nothing is sent back."""

    status = 499
    code = "client_closed_request"


class ModelUnavailable(BridgeError):
    status = 503
    code = "model_unavailable"
