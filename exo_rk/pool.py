"""``BridgePool``: several bridges behind the ``GenerationBackend`` protocol, so the engine and the gateway
drive N boards exactly as they drive one.

RKLLM runs whole models, so multi-board scale is request-level. For each request the pool picks one
bridge (``pick``):

- **Model affinity**: bridges that have the model loaded (per ``/health``, or because the pool already sent
  them a request for it) come first. A bridge that does not have it is asked to load it only when no
  bridge has it, or when every holder is saturated (all its instances busy) and that bridge is idle, or
  when every holder's queue is full.
- **Least outstanding work, weighted by capacity**: among the candidates the lowest
  ``outstanding / instances`` wins; outstanding counts this pool's requests plus the work other clients
  put on the bridge (``/health``'s busy + queued at the last check).
- **Health**: every bridge is probed (``GET /health``) every ``health_interval`` seconds; a bridge that fails
  a probe or breaks a request is ejected at once and probed again with exponential backoff capped at
  ``max_backoff`` (a few seconds: a probe of a dead address is one refused connect), so a restarted
  bridge is used again promptly. When every bridge is down the pool probes them all on demand, and a
  request that still finds none fails at once with ``NoBridgeAvailable`` (a ``BridgeUnavailable``, which
  the gateway answers with 503).
- **Failover only before the first token**: a refused, busy or broken attempt is retried on another
  bridge while nothing has been handed to the caller; so is an attempt whose bridge is ejected while it
  waits for its first token, and one whose bridge stays silent past its first-token budget
  (``exo_rk.first_token``: the bridge's measured prefill speed times the prompt length, between
  ``first_token_floor`` and ``first_token_cap``) while another bridge could take it. Leaving an attempt
  closes its connection, which makes that bridge abort it. Once a token went out, a failure ends the
  stream with the error (the engine turns it into a logged end-of-stream), so no text is ever generated
  twice.
- **Deadlines**: ``first_token_timeout`` bounds the whole search for a bridge and its first token,
  ``request_timeout`` the whole request.

A server without ``/health`` (a stock rkllama) is probed through its own model routes instead
(``exo_rk.stock_routes``: what it serves, what it has loaded) and, in one-shot mode, each request streams
from the server picked as above over that server's best stock route (``exo_rk.stock_pool``).

Bridges join and leave at run time through ``add_bridge`` / ``remove_bridge``, a servers file
(``RKLLM_SERVERS_FILE``, one ``host:port`` per line, re-read when it changes) or DNS: with
``resolve_interval`` (``RKLLM_POOL_RESOLVE_SECONDS``) above 0, a bridge given by name is looked up every
that many seconds and each address it resolves to is one bridge (a Kubernetes headless Service names every
ready bridge pod); addresses that appear join, those that disappear leave, and a failed look-up keeps the
bridges of the last one. ``metrics_text()`` renders
the per-bridge state as Prometheus text (served by the gateway at ``/metrics``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit, urlunsplit

from exo_rk import errors, pool_metrics
from exo_rk.client import (
    BridgeClient,
    EmbeddingsReply,
    GenerationParams,
    ModelInfo,
    OneShotReply,
    StreamEnd,
    StreamEvent,
)
from exo_rk.first_token import PrefillRate, first_token_budget
from exo_rk.settings import STOCK_ROUTES, Settings, parse_servers
from exo_rk.stock_routes import StockServer
from rk_common.timeouts import within

log = logging.getLogger(__name__)

# Errors after which another bridge may well succeed. Anything else (a malformed request, a wrong
# token) would get the same answer everywhere and goes straight back to the caller.
RETRYABLE = (errors.BridgeUnavailable, errors.BridgeBusy, errors.ModelNotFound, errors.BridgeProtocolError)

#: ``resolve(host, port)`` → the addresses ``host`` stands for (the pool's DNS look-up; injectable for tests)
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve_host(host: str, port: int) -> List[str]:
    """The addresses ``host`` resolves to for TCP (IPv4 and IPv6), in the resolver's order, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_name(url: str) -> bool:
    """True when the bridge URL names its host (``http://bridges:8080``) rather than giving an address."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return False


def member_url(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (one of the addresses the host resolved to)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _never(exc: BaseException) -> bool:
    return False


def _cannot_embed(exc: BaseException) -> bool:
    return isinstance(exc, errors.EmbeddingsUnsupported)


class NoBridgeAvailable(errors.BridgeUnavailable):
    """No configured bridge is up (or none of the live ones can serve the model)."""


class DeadlineExceeded(errors.BridgeUnavailable):
    """The request's deadline passed before it could be served or finished."""


class BridgeEjected(errors.BridgeUnavailable):
    """The bridge was ejected while this attempt waited for its first token."""


class FirstTokenLate(errors.BridgeUnavailable):
    """The bridge sent no first token within the attempt's budget; another bridge is free to try. Not a
    reason to eject the bridge: its health checks decide that."""


class Bridge:
    """One bridge as the pool sees it: its client, what its last health check said, and this pool's
    outstanding requests on it. Mutated only from the event loop."""

    def __init__(self, url: str, client: BridgeClient, probe: BridgeClient):
        self.url = url
        self.client = client
        self.probe = probe
        self.healthy = False
        self.checked = False  # at least one probe has answered or failed
        self.loaded: Dict[str, int] = {}  # model -> instances, from /health
        self.store: Optional[set[str]] = None  # models the bridge can serve; None = not known yet
        self.queue_max = 8
        self.external = 0  # busy + queued on the bridge not caused by this pool (at the last probe)
        self.outstanding = 0
        self.ended = 0  # requests of this pool ended since the last probe (the bridge may still count them)
        self.by_model: Dict[str, int] = collections.Counter()
        self.uptime: Optional[float] = None
        self.prefill = PrefillRate()
        self.stock: Optional[StockServer] = None  # set when the server turns out to be a stock rkllama
        # one future per attempt waiting for its first token here; resolved (with why) on ejection
        self.starting: set[asyncio.Future] = set()
        # backoff state for probes
        self.next_check = 0.0
        self.backoff = 0.0
        # counters (exported as metrics)
        self.dispatched = 0
        self.errors: Dict[str, int] = collections.Counter()
        self.ejections = 0
        self.loads: Dict[str, int] = collections.Counter()

    def __repr__(self) -> str:
        return f"Bridge({self.url}, {'up' if self.healthy else 'down'}, outstanding={self.outstanding})"

    def has(self, model: str) -> bool:
        """Loaded there, or about to be (this pool already sent it a request for the model)."""
        return model in self.loaded or self.by_model[model] > 0

    def can_serve(self, model: str) -> bool:
        return self.store is None or model in self.store

    def capacity(self, model: str) -> int:
        """Requests the bridge runs at once for ``model``: its instances (a guess before it is loaded)."""
        if model in self.loaded:
            return max(1, self.loaded[model])
        return max([1, *self.loaded.values()])

    def work(self) -> int:
        return self.outstanding + self.external

    def ratio(self, model: str) -> float:
        return self.work() / self.capacity(model)

    def saturated(self, model: str) -> bool:
        """Every instance busy: one more request would wait in the bridge's queue."""
        return self.work() >= self.capacity(model)

    def full(self, model: str) -> bool:
        """Instances and queue taken: the bridge would answer 429."""
        return self.work() >= self.capacity(model) + self.queue_max

    def begin(self, model: str) -> None:
        if not self.has(model):
            self.loads[model] += 1
        self.outstanding += 1
        self.by_model[model] += 1
        self.dispatched += 1

    def end(self, model: str) -> None:
        self.outstanding -= 1
        self.ended += 1
        self.by_model[model] -= 1

    def snapshot(self) -> Dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "outstanding": self.outstanding,
                "external": self.external, "loaded": dict(self.loaded), "dispatched": self.dispatched,
                "errors": dict(self.errors), "ejections": self.ejections, "loads": dict(self.loads)}


class BridgePool:
    """Several bridges as one ``GenerationBackend``. Safe to share between tasks of one event loop."""

    def __init__(self, servers: Iterable[str], *, token: Optional[str] = None, connect_timeout: float = 5.0,
                 stream_read_timeout: float = 300.0, first_token_timeout: float = 300.0,
                 request_timeout: Optional[float] = None, health_interval: float = 2.0,
                 health_timeout: float = 2.0, min_backoff: float = 0.25, max_backoff: float = 2.0,
                 first_token_floor: float = 10.0, first_token_cap: float = 120.0,
                 servers_file: Optional[Path] = None, resolve_interval: float = 0.0,
                 resolve: Optional[Resolver] = None, stock_routes: Sequence[str] = STOCK_ROUTES,
                 merge_system: str = "auto", stock_unload_other: bool = False):
        self.token = token
        self.stock_options = {"routes": tuple(stock_routes), "merge": merge_system,
                              "unload_other": stock_unload_other}
        self.connect_timeout = connect_timeout
        self.stream_read_timeout = stream_read_timeout
        self.first_token_timeout = first_token_timeout
        self.first_token_floor = first_token_floor
        self.first_token_cap = first_token_cap
        self.request_timeout = request_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.servers_file = servers_file
        self._servers_mtime: Optional[float] = None
        self.resolve_interval = resolve_interval
        self._resolve = resolve or resolve_host
        self._names: Dict[str, Tuple[str, ...]] = {}  # a bridge given by name -> the bridges it resolved to
        self._static: Set[str] = set()  # bridges given by address (or by name, without DNS look-ups)
        self._next_resolve = 0.0
        self._bridges: Dict[str, Bridge] = {}
        self._retired: List[Bridge] = []
        self._info: Dict[str, ModelInfo] = {}
        self._monitor: Optional[asyncio.Task] = None
        self._first_round: Optional[asyncio.Event] = None
        self._wake: Optional[asyncio.Event] = None
        self._last_rescue = 0.0
        self.retries = 0
        self.no_bridge = 0
        for url in servers:
            self._add_entry(url)

    @classmethod
    def from_settings(cls, settings: Settings) -> "BridgePool":
        """A pool over ``settings.servers`` (and ``settings.servers_file``) with the settings' timeouts."""
        return cls(settings.servers, token=settings.token, connect_timeout=settings.connect_timeout,
                   stream_read_timeout=max(settings.first_token_timeout, settings.token_timeout),
                   first_token_timeout=settings.first_token_timeout, request_timeout=settings.request_timeout,
                   health_interval=settings.health_interval, max_backoff=settings.health_max_backoff,
                   first_token_floor=settings.first_token_floor, first_token_cap=settings.first_token_cap,
                   servers_file=settings.servers_file, resolve_interval=settings.resolve_interval,
                   stock_routes=settings.stock_routes, merge_system=settings.merge_system,
                   stock_unload_other=settings.stock_unload_other)

    def __repr__(self) -> str:
        up = sum(b.healthy for b in self._bridges.values())
        return f"BridgePool({up}/{len(self._bridges)} bridges up)"

    # -- membership ---------------------------------------------------------------------------------

    def add_bridge(self, url: str) -> None:
        """Start using the bridge at ``url`` (``host:port`` or ``http://host:port``); probed before use."""
        url = parse_servers(url)[0]
        self._static.add(url)
        self._add_member(url)

    def _add_entry(self, url: str) -> None:
        """A configured bridge: looked up in DNS when it is a name and look-ups are on, else one bridge."""
        url = parse_servers(url)[0]
        if self.resolve_interval > 0 and is_name(url):
            if url not in self._names:
                self._names[url] = ()
                self._next_resolve = 0.0  # looked up in the next round
        else:
            self.add_bridge(url)

    def _add_member(self, url: str) -> None:
        if url in self._bridges:
            return
        client = BridgeClient(url, token=self.token, connect_timeout=self.connect_timeout,
                              stream_read_timeout=self.stream_read_timeout)
        probe = BridgeClient(url, token=self.token, call_timeout=self.health_timeout,
                             connect_timeout=min(self.connect_timeout, self.health_timeout))
        self._bridges[url] = Bridge(url, client, probe)
        log.info("pool: bridge %s added", url)
        if self._wake is not None:
            self._wake.set()

    def remove_bridge(self, url: str) -> None:
        """Stop sending new requests to ``url``; its running requests finish normally."""
        url = parse_servers(url)[0]
        self._static.discard(url)
        self._retire(url, "")

    def _retire(self, url: str, why: str) -> None:
        """No new requests for ``url``; it is closed once its running ones have finished."""
        bridge = self._bridges.pop(url, None)
        if bridge is not None:
            self._retired.append(bridge)
            log.info("pool: bridge %s removed%s (%d requests still running there)", url, why, bridge.outstanding)

    def bridges(self) -> List[Dict[str, Any]]:
        """A snapshot of every bridge's state (for diagnostics, tests and metrics)."""
        return [b.snapshot() for b in self._bridges.values()]

    def _read_servers_file(self) -> None:
        if self.servers_file is None:
            return
        try:
            mtime = self.servers_file.stat().st_mtime
            if mtime == self._servers_mtime:
                return
            lines = self.servers_file.read_text().splitlines()
            wanted = parse_servers(",".join(line.split("#", 1)[0] for line in lines))
        except (OSError, ValueError) as exc:
            log.warning("pool: cannot read the servers file %s: %s", self.servers_file, exc)
            return
        self._servers_mtime = mtime
        for url in wanted:
            self._add_entry(url)
        for name in set(self._names) - set(wanted):
            self._set_members(name, ())
            del self._names[name]
        keep = set(wanted) - set(self._names) | {m for members in self._names.values() for m in members}
        for url in set(self._bridges) - keep:
            self.remove_bridge(url)

    # -- DNS ----------------------------------------------------------------------------------------

    async def _resolve_names(self) -> None:
        """Look every name up once; a failed look-up keeps the bridges the name had."""
        self._next_resolve = time.monotonic() + self.resolve_interval
        for name in list(self._names):
            parts = urlsplit(name)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = await asyncio.wait_for(self._resolve(parts.hostname or "", port), self.connect_timeout)
            except Exception as exc:  # noqa: BLE001 - DNS may fail in any way; the pool keeps what it has
                log.warning("pool: cannot resolve %s (%s); keeping its %d bridges", name, exc or type(exc).__name__,
                            len(self._names.get(name, ())))
                continue
            if name in self._names:
                self._set_members(name, tuple(dict.fromkeys(member_url(name, a) for a in addresses)))

    def _set_members(self, name: str, members: Tuple[str, ...]) -> None:
        """The bridges of ``name`` are now ``members``: new ones join, gone ones leave (unless another name
        or the configuration still lists them)."""
        old = self._names.get(name, ())
        self._names[name] = members
        added = [m for m in members if m not in old]
        gone = [m for m in old if m not in members]
        others = {m for n, ms in self._names.items() if n != name for m in ms} | self._static
        for url in added:
            self._add_member(url)
        for url in gone:
            if url not in others:
                self._retire(url, f": {name} no longer resolves to it")
        if added or gone:
            log.info("pool: %s resolves to %d bridges%s%s", name, len(members),
                     f"; added {', '.join(added)}" if added else "", f"; removed {', '.join(gone)}" if gone else "")

    # -- health -------------------------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        """On first use: probe every bridge once, then keep probing in the background."""
        if self._monitor is None:
            self._wake, self._first_round = asyncio.Event(), asyncio.Event()
            self._monitor = asyncio.create_task(self._watch(), name="bridge-pool-health")
        await self._first_round.wait()

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self._read_servers_file()
                if self._names and time.monotonic() >= self._next_resolve:
                    await self._resolve_names()
                self._close_retired()
                now = time.monotonic()
                due = [b for b in self._bridges.values() if b.next_check <= now]
                if due:
                    await asyncio.gather(*(self._check(b) for b in due))
            except Exception:  # noqa: BLE001 - the health checks must outlive any one bad round
                log.exception("pool: health check round failed")
            self._first_round.set()
            wake_at = min((b.next_check for b in self._bridges.values()), default=now + self.health_interval)
            if self._names:
                wake_at = min(wake_at, self._next_resolve)
            delay = max(0.01, min(wake_at, time.monotonic() + self.health_interval) - time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _check(self, bridge: Bridge) -> None:
        """Probe ``bridge`` once and update its state; never raises."""
        try:
            if bridge.stock is not None:
                return await self._check_stock(bridge)
            health = await bridge.probe.health()
            if not bridge.healthy or bridge.store is None:
                bridge.store = set(await bridge.probe.list_models())
        except errors.ModelNotFound as exc:
            if exc.code is not None:  # a bridge's own JSON 404: not what a server without /health answers
                self._mark_down(bridge, f"health check failed: {exc}", probed=True)
                return
            log.info("pool: %s has no /health: a stock rkllama, probed through its model routes", bridge.url)
            bridge.stock = StockServer(bridge.client, **self.stock_options)
            return await self._check_stock(bridge)
        except errors.BridgeError as exc:
            self._mark_down(bridge, f"health check failed: {exc}", probed=True)
            return
        except Exception as exc:  # noqa: BLE001 - a probe must never kill the monitor
            self._mark_down(bridge, f"health check failed: {exc!r}", probed=True)
            return
        self._apply_health(bridge, health)

    async def _check_stock(self, bridge: Bridge) -> None:
        """Probe a stock server: its model list (asked once) and the models it has loaded now."""
        try:
            found = await asyncio.wait_for(bridge.stock.discover(), 5 * self.health_timeout)
            loaded = await asyncio.wait_for(bridge.stock.loaded_models(), self.health_timeout)
        except (errors.BridgeError, asyncio.TimeoutError) as exc:
            self._mark_down(bridge, f"stock server check failed: {exc!r}", probed=True)
            return
        if not (found.models or found.loaded_route or found.version):
            bridge.stock.discovery = None  # asked again at the next probe
            self._mark_down(bridge, "neither a bridge (no /health) nor a stock rkllama (no /models, "
                            "/api/tags or /current_model)", probed=True)
            return
        bridge.store = set(found.models) or None
        self._apply_health(bridge, {"models": [{"name": name, "instances": 1} for name in loaded or ()]})

    def _apply_health(self, bridge: Bridge, health: Dict[str, Any]) -> None:
        models = [m for m in health.get("models") or [] if isinstance(m, dict) and "name" in m]
        uptime = health.get("uptime_s")
        restarted = bridge.uptime is not None and isinstance(uptime, (int, float)) and uptime < bridge.uptime
        bridge.uptime = uptime if isinstance(uptime, (int, float)) else None
        bridge.loaded = {str(m["name"]): int(m.get("instances") or 1) for m in models}
        if isinstance(health.get("queue_max"), int):
            bridge.queue_max = health["queue_max"]
        running = sum(int(m.get("busy") or 0) + int(m.get("queued") or 0) for m in models)
        # What is not ours is other clients' work; a request we just closed may still be counted there
        # until the bridge notices, so it is not taken for someone else's.
        bridge.external = max(0, running - bridge.outstanding - bridge.ended)
        bridge.ended = 0
        if not bridge.healthy:
            log.info("pool: bridge %s is up (%s loaded)", bridge.url, ", ".join(bridge.loaded) or "nothing")
        elif restarted:
            log.info("pool: bridge %s restarted (%s loaded now)", bridge.url,
                     ", ".join(bridge.loaded) or "nothing")
        bridge.healthy = bridge.checked = True
        bridge.backoff = 0.0
        bridge.next_check = time.monotonic() + self.health_interval

    def _mark_down(self, bridge: Bridge, why: str, probed: bool = False) -> None:
        """Eject ``bridge`` (if it was up) and schedule its next probe. The wait doubles with each failed
        probe (not with each failed request: a burst of broken streams is one outage). Attempts still waiting
        for their first token there are told at once, so they move to another bridge."""
        for waiter in [w for w in bridge.starting if not w.done()]:
            waiter.set_result(why)
        if bridge.healthy:
            bridge.ejections += 1
            log.warning("pool: bridge %s ejected: %s", bridge.url, why)
        elif not bridge.checked:
            log.warning("pool: bridge %s is down: %s", bridge.url, why)
        elif not probed:
            return
        bridge.healthy = False
        bridge.checked = True
        bridge.store = None  # a bridge that comes back may serve another model store
        bridge.backoff = min(self.max_backoff, max(self.min_backoff, bridge.backoff * 2))
        bridge.next_check = time.monotonic() + bridge.backoff
        if self._wake is not None:
            self._wake.set()

    def _failed(self, bridge: Bridge, exc: BaseException) -> None:
        """Passive health: count the error; a bridge that cannot be reached is ejected at once."""
        bridge.errors[type(exc).__name__] += 1
        if isinstance(exc, errors.BridgeUnavailable) and not isinstance(exc, (DeadlineExceeded, FirstTokenLate)):
            self._mark_down(bridge, str(exc))
        elif isinstance(exc, errors.ModelNotFound):
            bridge.store = None  # its store changed under us: re-read it at the next probe

    async def _rescue(self) -> None:
        """Everything is down: probe every bridge right now (at most once per ``min_backoff``), so a
        bridge that came back is used without waiting for its backoff, and a dead pool fails fast."""
        if time.monotonic() - self._last_rescue < self.min_backoff:
            return
        self._last_rescue = time.monotonic()
        if self._names:  # the bridges may have moved (pods replaced): look the names up again first
            await self._resolve_names()
        await asyncio.gather(*(self._check(b) for b in list(self._bridges.values()) if not b.healthy))

    def _close_retired(self) -> None:
        for bridge in [b for b in self._retired if b.outstanding == 0]:
            self._retired.remove(bridge)
            asyncio.ensure_future(bridge.client.close())
            asyncio.ensure_future(bridge.probe.close())

    # -- choice -------------------------------------------------------------------------------------

    def pick(self, model: Optional[str], exclude: Sequence[Bridge] = ()) -> Bridge:
        """The bridge the next request for ``model`` should go to (see the module docstring); ``None``
        means any bridge. Raises ``NoBridgeAvailable`` when no live bridge outside ``exclude`` can take
        it, ``ModelNotFound`` when no live bridge knows the model."""
        up = [b for b in self._bridges.values() if b.healthy]
        live = [b for b in up if b not in exclude and (model is None or b.can_serve(model))]
        if not live:
            if up and model is not None and not any(b.can_serve(model) for b in up):
                raise errors.ModelNotFound(f"none of the {len(up)} live bridges has a model {model!r}")
            raise NoBridgeAvailable(f"no bridge can take a request for {model!r} ({len(up)} of "
                                    f"{len(self._bridges)} bridges up, {len(exclude)} tried)")
        if model is None:
            return min(live, key=lambda b: (b.work(), b.dispatched))
        holders = [b for b in live if b.has(model)]
        others = [b for b in live if not b.has(model)]

        def key(b: Bridge) -> Tuple[float, int, int]:
            return (b.ratio(model), -b.capacity(model), b.dispatched)

        for group in ([b for b in holders if not b.saturated(model)],
                      [b for b in others if b.work() == 0],
                      [b for b in holders if not b.full(model)],
                      others, holders):
            if group:
                return min(group, key=key)
        raise AssertionError("unreachable: live is not empty")

    async def _candidate(self, model: Optional[str], tried: List[Bridge], failures: List[BaseException],
                         passed_over: Callable[[BaseException], bool] = _never) -> Bridge:
        """``pick`` after the first probe; when every bridge is down, probe them all once more first.
        When the candidates run out, raise the last failure ``passed_over`` accepts (a bridge that cannot do
        this request), else what the failures have in common (all busy → ``BridgeBusy``, all without the
        model → ``ModelNotFound``), else ``NoBridgeAvailable``."""
        await self._ensure_started()
        try:
            try:
                return self.pick(model, tried)
            except NoBridgeAvailable:
                if any(b.healthy for b in self._bridges.values()):
                    raise
            await self._rescue()
            return self.pick(model, tried)
        except NoBridgeAvailable as exc:
            self.no_bridge += 1
            passed = [f for f in failures if passed_over(f)]
            if passed:
                raise passed[-1] from None
            if failures:
                for kind in (errors.BridgeBusy, errors.ModelNotFound):
                    if all(isinstance(f, kind) for f in failures):
                        raise failures[-1] from None
                log.warning("pool: no bridge left for %s after %d attempts; last error: %s", model, len(failures),
                            failures[-1])
                raise NoBridgeAvailable(exc.message) from failures[-1]
            raise

    # -- generation ---------------------------------------------------------------------------------

    async def stream(self, model: str, prompt_token_ids: Sequence[int], params: GenerationParams, *,
                     images: Optional[Dict[str, Any]] = None) -> AsyncIterator[StreamEvent]:
        """Tokens from the best bridge; retried elsewhere only while no event was handed out.

        Raises ``NoBridgeAvailable`` when no bridge can take the request, ``DeadlineExceeded`` when the
        first token or the whole request is late, and the bridge's ``BridgeError`` after the first token
        (the caller shows the stream's end; nothing is repeated). Closing the iterator early closes the
        bridge connection, which aborts the generation there."""
        started = time.monotonic()
        first_deadline = started + self.first_token_timeout
        end_deadline = None if self.request_timeout is None else started + self.request_timeout
        if end_deadline is not None:
            first_deadline = min(first_deadline, end_deadline)
        tried: List[Bridge] = []
        failures: List[BaseException] = []
        while True:
            bridge = await self._candidate(model, tried, failures)
            budget = self._first_token_budget(bridge, model, len(prompt_token_ids))
            bridge.begin(model)
            events = bridge.client.stream(model, prompt_token_ids, params, **({"images": images} if images else {}))
            try:
                first = await self._first_event(events, model, bridge, budget, first_deadline, tried)
                break
            except BaseException as exc:
                bridge.end(model)
                await events.aclose()
                if not isinstance(exc, RETRYABLE) or isinstance(exc, DeadlineExceeded):
                    raise
                self._failed(bridge, exc)
                tried.append(bridge)
                failures.append(exc)
                self.retries += 1
                log.info("pool: %s could not start %s (%s); trying another bridge", bridge.url, model, exc)
        bridge.loaded.setdefault(model, bridge.capacity(model))
        try:
            yield first
            if isinstance(first, StreamEnd):
                bridge.prefill.record(first)
                return
            while True:
                try:
                    event = await _next_within(events, _left(end_deadline))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(f"request exceeded its deadline of {self.request_timeout:g} s",
                                           url=bridge.url) from None
                except errors.BridgeError as exc:
                    self._failed(bridge, exc)
                    raise
                yield event
                if isinstance(event, StreamEnd):
                    bridge.prefill.record(event)
                    return
        finally:
            bridge.end(model)
            await events.aclose()

    def _first_token_budget(self, bridge: Bridge, model: str, prompt_tokens: int) -> float:
        """Seconds this attempt may wait for its first token before another bridge is tried (see
        ``exo_rk.first_token``); the cap when the bridge must load the model or queue the request."""
        if model not in bridge.loaded or bridge.saturated(model):
            return self.first_token_cap
        return first_token_budget(prompt_tokens, bridge.prefill.ms_per_token, floor=self.first_token_floor,
                                  cap=self.first_token_cap)

    def _has_alternative(self, model: str, exclude: Sequence[Bridge]) -> bool:
        try:
            self.pick(model, exclude)
        except (NoBridgeAvailable, errors.ModelNotFound):
            return False
        return True

    async def _first_event(self, events: AsyncIterator[StreamEvent], model: str, bridge: Bridge,
                           budget: float, deadline: float, tried: Sequence[Bridge]) -> StreamEvent:
        """The attempt's first event. Raises ``BridgeEjected`` when the bridge is ejected meanwhile and
        ``FirstTokenLate`` when it stays silent past ``budget`` seconds while another bridge could take
        the request (with nowhere else to go it keeps waiting, up to the request's first-token
        ``deadline``)."""
        ejected = asyncio.get_running_loop().create_future()
        bridge.starting.add(ejected)
        pending = asyncio.ensure_future(events.__anext__())
        patience = min(deadline, time.monotonic() + budget)
        try:
            while not pending.done():
                await asyncio.wait((pending, ejected), timeout=_left(patience),
                                   return_when=asyncio.FIRST_COMPLETED)
                if pending.done():
                    break
                if ejected.done():
                    raise BridgeEjected(f"bridge ejected before the first token: {ejected.result()}",
                                        url=bridge.url)
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"no first token for {model!r} within its deadline "
                                           f"({self.first_token_timeout:g} s)", url=bridge.url)
                if time.monotonic() >= patience:
                    if self._has_alternative(model, [*tried, bridge]):
                        raise FirstTokenLate(f"no first token within {budget:.1f} s", url=bridge.url)
                    patience = deadline
            first = pending.result()
        except StopAsyncIteration:
            raise errors.BridgeProtocolError("stream ended before its first line", url=bridge.url) from None
        finally:
            bridge.starting.discard(ejected)
            if not pending.done():
                pending.cancel()  # leaves the stream: its connection closes and the bridge aborts
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        if isinstance(first, StreamEnd) and first.finish_reason == "error":
            # The runtime failed before producing anything: nothing reached the caller, so retrying is safe.
            raise errors.BridgeUnavailable(f"bridge failed before the first token: {first.error}",
                                           url=bridge.url)
        return first

    async def generate_oneshot(self, model: str, messages: Sequence[Dict[str, Any]],
                               params: Optional[GenerationParams] = None) -> OneShotReply:
        """One-shot generation on the best bridge; the answer is all-or-nothing, so any retryable
        failure is retried on another bridge."""
        return await self._with_failover(model, lambda b: b.client.generate_oneshot(model, messages, params),
                                         count=True)

    async def embed(self, model: str, texts: Sequence[str]) -> EmbeddingsReply:
        """Embeddings from the best bridge for ``model``; a bridge that fails retryably or cannot embed
        (``EmbeddingsUnsupported``, not a health problem) is passed over for the next one."""
        return await self._with_failover(model, lambda b: b.client.embed(model, texts), count=True,
                                         passed_over=_cannot_embed)

    async def _with_failover(self, model: Optional[str], call: Callable[[Bridge], Awaitable[Any]], *,
                             count: bool = False, passed_over: Callable[[BaseException], bool] = _never) -> Any:
        """``call`` on the bridge ``pick`` chooses, then on the next one while it fails retryably or with a
        failure ``passed_over`` accepts (see ``note_failure``)."""
        tried: List[Bridge] = []
        failures: List[BaseException] = []
        while True:
            bridge = await self._candidate(model, tried, failures, passed_over)
            if count:
                bridge.begin(model)
            try:
                return await call(bridge)
            except Exception as exc:  # noqa: BLE001 - note_failure re-raises what another bridge cannot mend
                self.note_failure(bridge, exc, tried, failures, passed_over)
            finally:
                if count:
                    bridge.end(model)

    def note_failure(self, bridge: Bridge, exc: BaseException, tried: List[Bridge], failures: List[BaseException],
                     passed_over: Callable[[BaseException], bool] = _never) -> None:
        """Re-raise ``exc`` unless another bridge may do better: a retryable failure (it counts against
        ``bridge``'s health) or one ``passed_over`` accepts (``bridge`` cannot do this request: no mark
        against its health); then the attempt is noted for the next ``_candidate``."""
        if isinstance(exc, RETRYABLE):
            self._failed(bridge, exc)
            self.retries += 1
        elif passed_over(exc):
            log.info("pool: %s cannot take the request (%s); trying another bridge", bridge.url, exc)
        else:
            raise exc
        tried.append(bridge)
        failures.append(exc)

    # -- models -------------------------------------------------------------------------------------

    async def ensure_model(self, model: str) -> ModelInfo:
        """Make sure one live bridge has ``model`` loaded: a no-op when one has it, else it is loaded on the
        least busy bridge. Returns the model's info."""
        await self._ensure_started()
        if not any(b.healthy and model in b.loaded for b in self._bridges.values()):
            async def load(bridge: Bridge) -> None:
                log.info("pool: loading %s on %s", model, bridge.url)
                await bridge.client.load_model(model)
                bridge.loaded.setdefault(model, bridge.capacity(model))

            await self._with_failover(model, load, count=True)
        return await self.model_info(model)

    async def model_info(self, model: str) -> ModelInfo:
        if model not in self._info:
            self._info[model] = await self._with_failover(model, lambda b: b.client.model_info(model))
        return self._info[model]

    async def list_models(self) -> List[str]:
        """Every model some live bridge can serve (the stores of all live bridges, merged)."""
        await self._ensure_started()
        live = [b for b in self._bridges.values() if b.healthy]
        if not live:
            await self._rescue()
            live = [b for b in self._bridges.values() if b.healthy]
        if not live:
            raise NoBridgeAvailable(f"none of the {len(self._bridges)} bridges is up")
        answers = await asyncio.gather(*(_models_of(b) for b in live), return_exceptions=True)
        names: Dict[str, None] = {}
        for bridge, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                self._failed(bridge, answer)
                continue
            bridge.store = set(answer)
            names.update(dict.fromkeys(answer))
        if not names and all(isinstance(a, BaseException) for a in answers):
            raise NoBridgeAvailable("no bridge answered the model list")
        return list(names)

    async def has_native_stream(self) -> bool:
        """True when the live bridges speak the native stream (asked of one live bridge)."""
        return await self._with_failover(None, lambda b: b.client.has_native_stream())

    async def tokenizer_files(self, model: str) -> Tuple[List[str], Optional[str]]:
        return await self._with_failover(model, lambda b: b.client.tokenizer_files(model))

    async def tokenizer_file(self, model: str, name: str) -> bytes:
        return await self._with_failover(model, lambda b: b.client.tokenizer_file(model, name))

    # -- lifecycle and metrics ----------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """The pool's state as Prometheus text: per bridge up, outstanding, requests, errors, ejections,
        loads; pool-wide retries and requests refused for want of a bridge."""
        return pool_metrics.render(self)

    async def close(self) -> None:
        """Stop the health checks and close every connection."""
        if self._monitor is not None:
            self._monitor.cancel()
            try:
                await self._monitor
            except asyncio.CancelledError:
                pass
            self._monitor = None
        for bridge in [*self._bridges.values(), *self._retired]:
            await bridge.client.close()
            await bridge.probe.close()
        self._retired.clear()


async def _models_of(bridge: Bridge) -> List[str]:
    if bridge.stock is not None:
        return list((await bridge.stock.discover()).models)
    return await bridge.client.list_models()


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _next_within(events: AsyncIterator[StreamEvent], seconds: Optional[float]) -> StreamEvent:
    """The next event, or ``asyncio.TimeoutError`` after ``seconds`` (None: no limit)."""
    return await within(events.__anext__(), seconds)
