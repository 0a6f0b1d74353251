"""Build the ``GenerationBackend`` the settings describe: one bridge client, or a pool of bridges."""

from __future__ import annotations

import logging
from importlib.util import find_spec

from exo_rk.client import BridgeClient, GenerationBackend
from exo_rk.settings import Settings

log = logging.getLogger(__name__)


def client_for(url: str, settings: Settings) -> BridgeClient:
    """A client of the bridge at ``url`` with the settings' token and timeouts."""
    return BridgeClient(
        url,
        token=settings.token,
        connect_timeout=settings.connect_timeout,
        stream_read_timeout=max(settings.first_token_timeout, settings.token_timeout),
    )


def make_backend(settings: Settings) -> GenerationBackend:
    """``BridgePool`` (``exo_rk.pool``) when several bridges, a servers file or DNS look-ups of the bridges'
    names (``resolve_interval``) are configured, else a single client."""
    if len(settings.servers) > 1 or settings.servers_file is not None or settings.resolve_interval > 0:
        if find_spec("exo_rk.pool") is not None:
            from exo_rk.pool import BridgePool

            return BridgePool.from_settings(settings)
        log.warning(
            "%d bridges configured but exo_rk.pool is not installed: using only %s",
            len(settings.servers),
            settings.servers[0],
        )
    return client_for(settings.servers[0], settings)
