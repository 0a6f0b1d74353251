"""The bridge's errors: the shared tree (:mod:`rk_common.errors`) plus the bridge's own cases. Every error
that reaches a client is one of these, as JSON ``{"error": {"code": ..., "message": ...}}`` with
``status`` as the HTTP status."""

from __future__ import annotations

from rk_common.errors import ApiError as BridgeError
from rk_common.errors import BadRequest, TooManyRequests, Unauthorized

__all__ = ["BridgeError", "BadRequest", "Unauthorized", "ModelNotFound", "QueueFull", "ContextOverflow",
           "ClientGone", "ModelUnavailable", "PullUnsupported"]


class ModelNotFound(BridgeError):
    status = 404
    code = "model_not_found"


class QueueFull(TooManyRequests):
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


class PullUnsupported(BridgeError):
    """``/api/pull`` and ``/pull``: the bridge never downloads (boards are often offline)."""

    status = 501
    code = "pull_not_supported"

    def __init__(self, message: str = ""):
        super().__init__(message or "this bridge does not download models: copy the model's directory (its .rkllm "
                         "file, tokenizer files and a Modelfile with FROM and HUGGINGFACE_PATH) into the models "
                         "directory (--models), then list it with /api/tags; 'rkllama-bridge doctor' checks it")
