"""The ``image-engine`` command: ``serve`` and ``upscale``; more subcommands plug into ``COMMANDS``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from rk_common.http_front import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS

from .config import ConfigError, EngineConfig, SRConfig
from .errors import BadInput, ImageEngineError

log = logging.getLogger("image_engine")


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $PORT or 4200; 0 picks a free one)")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    p.add_argument("--threads", type=int, default=None, help="HTTP threads (default: workers + queue + 4)")
    p.add_argument("--token", default=None, help="bearer token required on every route but /health "
                   "(default $IMAGE_ENGINE_TOKEN)")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, help="seconds a request's "
                   "head may take to arrive from its first byte (slow clients get 408)")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, help="open connections "
                   "beyond which new ones get a JSON 503")


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)  # atomic: a reader never sees a half-written port


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API with waitress until SIGTERM/SIGINT; services are closed on the way out."""
    from rk_common.http_front import create_front_server, ops_lane
    from rk_common.memory import limit_malloc_arenas

    from .app import close_app, create_app, image_lanes

    config = EngineConfig.from_env(host=args.host, port=args.port, port_file=args.port_file,
                                   http_threads=args.threads, token=args.token)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        log.warning("binding %s without a token: anyone on the network can use this service "
                    "(set --token or IMAGE_ENGINE_TOKEN)", config.host)
    limit_malloc_arenas()
    app = create_app(config)
    try:
        server = create_front_server(app, host=config.host, port=config.port,
                                     threads=config.effective_http_threads,
                                     lanes=[ops_lane(), *image_lanes(app)],
                                     header_timeout_s=args.header_timeout, max_connections=args.max_connections,
                                     clear_untrusted_proxy_headers=True,
                                     # the app answers a JSON 413 below this; waitress's cap only
                                     # bounds bodies sent without a Content-Length (chunked)
                                     max_request_body_size=2 * config.max_body_bytes)
        app.config["HTTP_LANES"] = server.lane_stats
        port = int(server.effective_port)
        if config.port_file is not None:
            _write_port_file(config.port_file, port)
        log.info("image-engine listening on http://%s:%d", config.host, port)

        def stop(signum, _frame):
            # Cancel jobs first so that waiting requests get their 503 before the HTTP server stops.
            log.info("signal %d: cancelling queued and running jobs, then stopping", signum)
            close_app(app)
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            server.run()  # waitress returns from run() on KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        server.close()
        log.info("stopped")
    finally:
        close_app(app)
    return 0


def _add_upscale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="image to upscale")
    p.add_argument("output", type=Path, help="where to write the result (format from the suffix)")
    p.add_argument("--magnitude", type=int, default=1, help="passes of x3 (1-3)")
    p.add_argument("--format", dest="out_format", default=None, help="png | jpeg | webp (default: suffix)")
    p.add_argument("--quality", type=int, default=92, help="JPEG/WebP quality 1-100")
    p.add_argument("--model", type=Path, default=None, help="model file (default $SR_MODEL_PATH or embedded)")


def cmd_upscale(args: argparse.Namespace) -> int:
    """Upscale one file through the same service code the server uses (honours the SR_* variables)."""
    from .sr_service import SRService

    if not args.input.is_file():
        raise BadInput(f"input file not found: {args.input}")
    overrides = {"num_workers": 1, "enabled": True, "request_timeout": 1e9}
    if args.model is not None:
        overrides["model_path"] = args.model
    service = SRService(SRConfig.from_env(**overrides))
    try:
        fmt = args.out_format or args.output.suffix.lstrip(".") or "png"
        result = service.upscale_bytes(args.input.read_bytes(), args.magnitude, fmt, args.quality)
    finally:
        service.close()
    args.output.write_bytes(result.data)
    print(f"{args.input} -> {args.output}: {result.width}x{result.height} "
          f"(x{result.headers['X-SR-Scale']}, {service.model_name})")
    return 0


def _add_tiny_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="where to write the model set (created)")
    p.add_argument("--size", default="64x64", help="fixed image size WIDTHxHEIGHT, multiples of 8 (default 64x64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--rknn", action="store_true", help="also write model.rknn placeholders (fake RKNNLite)")


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    """Write a tiny random LCM model set (real file layout and tensor names) for tests and demos."""
    from .modes import parse_size
    from .tiny_model import write_tiny_model

    try:
        width, height = parse_size(args.size)
        root = write_tiny_model(args.directory, width, height, seed=args.seed, rknn_placeholders=args.rknn)
    except (ValueError, RuntimeError) as exc:
        raise BadInput(str(exc)) from None
    print(f"wrote a tiny {width}x{height} LCM model to {root}")
    return 0


# name → (help, argument builder, handler). Other subcommands register here.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "serve": ("serve the HTTP API (/superres, /health)", _add_serve_args, cmd_serve),
    "upscale": ("upscale an image file x3 per pass", _add_upscale_args, cmd_upscale),
    "make-tiny-model": ("write a tiny random LCM model set", _add_tiny_model_args, cmd_make_tiny_model),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-engine", description="Super-resolution and LCM "
                                     "text-to-image on RKNNLite or onnxruntime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Optional[list] = None) -> int:
    """Entry point of the ``image-engine`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (ConfigError, ImageEngineError, OSError) as exc:
        print(f"image-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) or getattr(exc, "status", 500) < 500 else 1
