"""Optional bearer-token auth: every path but the open ones (liveness) needs ``Authorization: Bearer <token>``."""

from __future__ import annotations

import hmac
from typing import Iterable, Optional

from .errors import Unauthorized

# liveness and readiness stay reachable for load balancers and probes without the token
OPEN_PATHS = ("/health", "/health/ready")


class BearerAuth:
    """Checks one request's ``Authorization`` header against the configured token (constant time)."""

    def __init__(self, token: str, open_paths: Iterable[str] = OPEN_PATHS):
        self._expected = f"Bearer {token}".encode()
        self.open_paths = frozenset(open_paths)

    def refusal(self, path: str, authorization: Optional[str]) -> Optional[Unauthorized]:
        """None when the request may pass, else the 401 to answer."""
        if path in self.open_paths:
            return None
        if hmac.compare_digest((authorization or "").encode(), self._expected):
            return None
        return Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def bearer_auth(token: Optional[str], open_paths: Iterable[str] = OPEN_PATHS) -> Optional[BearerAuth]:
    """A checker when a token is configured, else None (auth off)."""
    return BearerAuth(token, open_paths) if token else None
