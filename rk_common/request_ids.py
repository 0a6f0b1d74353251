"""Request ids: a client's ``X-Request-Id`` is echoed (when it is a plain token), otherwise one is made up;
the id is in the response header and in the error log lines of the request (:func:`current`)."""

from __future__ import annotations

import contextvars
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
