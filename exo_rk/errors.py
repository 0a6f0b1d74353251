"""The exception tree of the exo side. Callers catch classes, never compare strings.

``BridgeError`` and its children describe what a bridge answered (or failed to answer); the engine turns
them into a clear message before the first token and into a logged end-of-stream after it.
"""

from __future__ import annotations

from typing import Optional


class BridgeError(Exception):
    """A bridge could not do what was asked. ``code`` is the bridge's error code when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        url: Optional[str] = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"{self.message}{where}"


class BridgeUnavailable(BridgeError):
    """The bridge cannot be reached, dropped the connection or timed out."""


class BridgeBusy(BridgeError):
    """The bridge's queue for the model is full (HTTP 429); ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelNotFound(BridgeError):
    """The bridge does not know the model (HTTP 404)."""


class BadBridgeRequest(BridgeError):
    """The bridge refused the request as malformed or too large (HTTP 400/413/422)."""


class BridgeAuthError(BridgeError):
    """The bridge wants a different bearer token (HTTP 401/403)."""


class BridgeProtocolError(BridgeError):
    """The bridge answered something this client does not understand."""


class StreamNotSupported(BridgeError):
    """The server has no native token stream (a stock rkllama): use the one-shot mode."""


class EmbeddingsUnsupported(BridgeError):
    """The server cannot compute embeddings: its runtime gives no hidden states (HTTP 501), or it has no
    embeddings route at all (a stock rkllama of the original API)."""


class PartialShardError(ValueError):
    """exo asked for a layer range; RKLLM runs whole models only (scale is request-level)."""


class UnknownModel(KeyError):
    """No model card and no bridge model matches the requested model id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"
