"""The ``exo-rk`` command: ``exo-rk serve`` runs the OpenAI-compatible gateway over one or more bridges."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from aiohttp import web

from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.gateway import create_app
from exo_rk.gateway_context import LIFECYCLE_KEY
from exo_rk.gateway_server import GatewayRunner
from exo_rk.settings import PROGRAM, Settings
from rk_common.settings import SettingsError, cli_error

log = logging.getLogger("exo_rk")
CUT_WAIT_S = 10.0  # after the cut: time for the cut replies' last lines to be written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exo-rk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    PROGRAM.add_arguments(sub.add_parser("serve", help="OpenAI-compatible gateway over RKLLM bridges"))
    return parser


async def serve(
    settings: Settings,
    host: str,
    port: int,
    port_file: Optional[Path],
    default_model: str,
    stop: Optional[asyncio.Event] = None,
    on_ready=None,
    api_token: Optional[str] = None,
) -> None:
    """Serve the gateway until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    if host not in ("127.0.0.1", "localhost", "::1") and not api_token:
        log.warning("binding %s without --api-token: anyone on the network can use this gateway", host)
    engine = RKLLMInferenceEngine(None, settings=settings)
    app = create_app(engine, default_model, api_token)
    # aiohttp's own wait for open connections, after ours below: short, everything is done or cut by then
    runner = GatewayRunner(app, shutdown_timeout=CUT_WAIT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(bound))
    log.info(
        "gateway on http://%s:%d (bridges: %s, mode %s)",
        host,
        bound,
        ", ".join(settings.servers),
        settings.mode,
    )
    if on_ready is not None:
        on_ready(bound)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        await stop.wait()
        await drain(app, runner, settings.shutdown_grace)
    finally:
        await runner.cleanup()


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("second signal (%s): exiting now", sig.name)
        logging.shutdown()
        os._exit(1)
    stop.set()


async def drain(app: web.Application, runner: web.AppRunner, grace_s: float) -> None:
    """Stop accepting, let the running chats finish within ``grace_s``, then cut them (finish "shutdown")."""
    lifecycle = app[LIFECYCLE_KEY]
    lifecycle.stopping = True
    for site in list(runner.sites):
        await site.stop()
    log.info("stopping: not accepting new requests; %d in progress get up to %g s to finish", lifecycle.active,
             grace_s)
    if not await _idle(lifecycle, grace_s):
        log.warning("%d requests still running after the %g s grace period: ending them", lifecycle.active, grace_s)
        lifecycle.cut = True
        await _idle(lifecycle, CUT_WAIT_S)


async def _idle(lifecycle, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while lifecycle.active:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = PROGRAM.load(args)
    except SettingsError as exc:
        return cli_error("exo-rk", exc)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(
            serve(settings, settings.host, settings.port, settings.port_file, settings.default_model,
                  api_token=settings.api_token)
        )
    except OSError as exc:
        print(f"exo-rk: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
