"""The exceptions of image_engine: each carries the HTTP status and the error code the API answers with."""

from __future__ import annotations

from rk_common.errors import ApiError


class ImageEngineError(ApiError):
    """Base of every error the engine reports to a caller; ``status`` and ``code`` shape the JSON answer."""

    status: int = 500
    code: str = "internal_error"


class QueueFull(ImageEngineError):
    """The bounded job queue is full: the caller should retry later."""

    status = 429
    code = "queue_full"


class JobTimeout(ImageEngineError):
    """The job did not finish within its time limit; it has been cancelled."""

    status = 504
    code = "timeout"


class TooLarge(ImageEngineError):
    """The input (or an intermediate pass) exceeds a configured size limit."""

    status = 413
    code = "too_large"


class BadInput(ImageEngineError):
    """The request is malformed: bad parameter, empty or undecodable upload."""

    status = 400
    code = "bad_input"


class RuntimeFailure(ImageEngineError):
    """The model runtime failed (load error, inference returned nothing, wrong output shape)."""

    status = 500
    code = "runtime_failure"


class Cancelled(ImageEngineError):
    """The job was cancelled (timeout or shutdown) before it finished."""

    status = 503
    code = "cancelled"


class Unavailable(ImageEngineError):
    """The feature is switched off or the engine is shutting down."""

    status = 503
    code = "unavailable"
