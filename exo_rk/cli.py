"""The ``exo-rk`` command: ``exo-rk serve`` runs the OpenAI-compatible gateway over one or more bridges."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from aiohttp import web

from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.gateway import create_app
from exo_rk.settings import PROGRAM, Settings
from rk_common.settings import SettingsError, cli_error

log = logging.getLogger("exo_rk")


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
    runner = web.AppRunner(create_app(engine, default_model, api_token))
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
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


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
