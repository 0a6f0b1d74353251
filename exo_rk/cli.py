"""The ``exo-rk`` command: ``exo-rk serve`` runs the OpenAI-compatible gateway over one or more bridges."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from aiohttp import web

from exo_rk.engine import RKLLMInferenceEngine
from exo_rk.gateway import create_app
from exo_rk.gateway_server import GatewayRunner
from exo_rk.model_cards import DEFAULT_MODEL_ID
from exo_rk.settings import MODES, Settings, parse_servers

log = logging.getLogger("exo_rk")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exo-rk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="OpenAI-compatible gateway over RKLLM bridges")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=52415, help="port (default 52415, like exo; 0 = any free)")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="URL",
        help="bridge URL or host:port (repeatable; default: $RKLLM_SERVERS or "
        "$RKLLM_SERVER_HOST:$RKLLM_SERVER_PORT)",
    )
    serve.add_argument("--token", help="bearer token for the bridges (default: $RKLLM_TOKEN)")
    serve.add_argument(
        "--api-token",
        help="bearer token clients must send on every route but /health (default: $EXO_RK_API_TOKEN)",
    )
    serve.add_argument("--mode", choices=MODES, help="native stream, one-shot token caching, or auto")
    serve.add_argument(
        "--default-model", default=DEFAULT_MODEL_ID, help="model used when a request names none"
    )
    serve.add_argument("--log-level", default="INFO")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes = {}
    if args.bridge:
        changes["servers"] = parse_servers(",".join(args.bridge))
    if args.token:
        changes["token"] = args.token
    if args.mode:
        changes["mode"] = args.mode
    return settings.with_(**changes) if changes else settings


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
    runner = GatewayRunner(create_app(engine, default_model, api_token))
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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"exo-rk: {exc}", file=sys.stderr)
        return 2
    try:
        api_token = args.api_token or os.environ.get("EXO_RK_API_TOKEN") or None
        asyncio.run(
            serve(settings, args.host, args.port, args.port_file, args.default_model, api_token=api_token)
        )
    except OSError as exc:
        print(f"exo-rk: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
