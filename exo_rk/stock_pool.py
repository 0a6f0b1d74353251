"""The one-shot mode over a pool of stock rkllama servers: the interface of one ``StockServer``
(``discover``, ``ensure_model``, ``stream``), each request on the server ``BridgePool.pick`` chooses.

Each server keeps its own ladder (``Bridge.stock``: the routes that work there, whether it refuses system
messages), so a pool streams over the stock stream routes exactly as one server does; the cached
``/generate`` is used only where it is the best route left. A request moves to another server only while
nothing of its reply has been handed out; after that a failure ends it. A one-model server that holds
another model (and may not unload it, ``RKLLM_STOCK_UNLOAD_OTHER``) is passed over for the next server;
when every server is like that the request fails with that server's reason.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence

from exo_rk import errors
from exo_rk.client import BridgeClient, GenerationParams, StreamEvent
from exo_rk.pool import Bridge, BridgePool
from exo_rk.stock_routes import Discovery, StockServer

log = logging.getLogger(__name__)


class StockPool:
    """Several stock servers behind one ladder. Safe to share between tasks of one event loop."""

    def __init__(self, pool: BridgePool):
        self.pool = pool

    def _server(self, bridge: Bridge) -> StockServer:
        if bridge.stock is None:  # not probed as a stock server (yet): it is one if one-shot mode is asked
            bridge.stock = StockServer(bridge.client, **self.pool.stock_options)
        return bridge.stock

    def _live(self) -> List[Bridge]:
        return [b for b in self.pool._bridges.values() if b.healthy]

    async def discover(self) -> Discovery:
        """What the live servers serve, merged (each server is asked once)."""
        await self.pool._ensure_started()
        merged = Discovery()
        for bridge in self._live():
            try:
                found = await self._server(bridge).discover()
            except errors.BridgeError as exc:
                self.pool._failed(bridge, exc)
                continue
            merged.models.extend(m for m in found.models if m not in merged.models)
        return merged

    async def ensure_model(self, model: str) -> None:
        """Have ``model`` loaded on one live server (a no-op when one has it)."""
        await self.pool._ensure_started()
        if any(model in b.loaded for b in self._live()):
            return
        await self.pool._with_failover(model, lambda bridge: self._load(bridge, model), count=True,
                                       passed_over=_holds_another_model)

    async def _load(self, bridge: Bridge, model: str) -> None:
        await self._server(bridge).ensure_model(model)
        bridge.loaded.setdefault(model, 1)

    def stream(self, model: str, messages: Sequence[Dict[str, Any]], params: GenerationParams,
               encode: Callable[[str], List[int]], request_id: str = "") -> AsyncIterator[StreamEvent]:
        """Token events then one ``StreamEnd`` from the server the pool picks (see the module docstring)."""
        return self._stream(model, list(messages), params, encode, request_id)

    async def _stream(self, model, messages, params, encode, request_id) -> AsyncIterator[StreamEvent]:
        pool = self.pool
        tried: List[Bridge] = []
        failures: List[BaseException] = []
        while True:
            bridge = await pool._candidate(model, tried, failures, _holds_another_model)
            bridge.begin(model)
            server = self._server(bridge)
            events = server.stream(model, messages, params, encode, request_id)
            try:
                if model not in bridge.loaded:
                    await self._load(bridge, model)  # a stock server generates only with the model loaded
                first = await events.__anext__()
                break
            except StopAsyncIteration:
                bridge.end(model)
                raise errors.BridgeProtocolError("stock stream ended before its first piece",
                                                 url=bridge.url) from None
            except BaseException as exc:
                bridge.end(model)
                await events.aclose()
                pool.note_failure(bridge, exc, tried, failures, _holds_another_model)
        log.debug("request %s: stock server %s", request_id, bridge.url)
        try:
            yield first
            async for event in events:
                yield event
        except errors.BridgeError as exc:
            pool._failed(bridge, exc)
            raise
        finally:
            bridge.end(model)
            await events.aclose()


def _holds_another_model(exc: BaseException) -> bool:
    return isinstance(exc, errors.BadBridgeRequest) and exc.code == "model_conflict"


def stock_server_for(backend: Any, settings: Any) -> Optional[Any]:
    """The ladder over ``backend``: a ``StockServer`` for one server, a ``StockPool`` (the same interface
    over several servers) for a pool; None for a backend that is neither."""
    if isinstance(backend, BridgePool):
        return StockPool(backend)
    if isinstance(backend, BridgeClient):
        return StockServer(backend, routes=settings.stock_routes, merge=settings.merge_system,
                           unload_other=settings.stock_unload_other)
    return None
