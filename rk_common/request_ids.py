"""Request ids: a client's ``X-Request-Id`` is echoed (when it is a plain token), otherwise one is made up;
the id is in the response header and in the log lines written while the request is handled."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import Optional

HEADER = "X-Request-Id"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("rk_request_id", default="-")


def request_id_for(given: Optional[str]) -> str:
    """The client's id if it is safe to echo and log (no spaces, control characters or huge values)."""
    if given and _ACCEPTABLE.fullmatch(given):
        return given
    return uuid.uuid4().hex


def bind(request_id: str) -> contextvars.Token:
    """Make ``request_id`` the current one (for this thread or task) until :func:`unbind`."""
    return _current.set(request_id)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def current() -> str:
    """The id of the request being handled here, or "-" outside a request."""
    return _current.get()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so a format can show it (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current()
        return True


def install_log_filter(logger: Optional[logging.Logger] = None) -> None:
    """Give every handler of ``logger`` (the root by default) the request id, once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
