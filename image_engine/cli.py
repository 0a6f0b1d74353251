"""The ``image-engine`` command: ``serve`` and ``upscale``; more subcommands plug into ``COMMANDS``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from rk_common.settings import SettingsError

from .config import PROGRAM
from .convert_cli import add_convert_args, cmd_convert
from .errors import BadInput, ImageEngineError

log = logging.getLogger("image_engine")


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    PROGRAM.add_arguments(p)


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)  # atomic: a reader never sees a half-written port


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API with waitress until SIGTERM/SIGINT; services are closed on the way out."""
    import waitress

    from .app import close_app, create_app

    config = PROGRAM.load(args)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        log.warning("binding %s without a token: anyone on the network can use this service "
                    "(set --token or IMAGE_ENGINE_TOKEN)", config.host)
    app = create_app(config)
    try:
        server = waitress.create_server(app, host=config.host, port=config.port,
                                        threads=config.effective_http_threads,
                                        clear_untrusted_proxy_headers=True,
                                        # the app answers a JSON 413 below this; waitress's cap only
                                        # bounds bodies sent without a Content-Length (chunked)
                                        max_request_body_size=2 * config.max_body_bytes)
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
    service = SRService(replace(PROGRAM.from_env().sr, **overrides).validate())
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


def _add_merge_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, help="LCM model directory with unet/model.onnx (and text_encoder/)")
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:SCALE]",
                   help="a .safetensors LoRA (kohya, diffusers or PEFT naming) and its scale (default 1.0); "
                        "repeat for several")
    p.add_argument("--out", type=Path, required=True, help="the new model directory to write (must not exist)")
    p.add_argument("--strict", action="store_true", help="fail when any LoRA key matches no layer")
    p.add_argument("--json", action="store_true", help="print the merge report as JSON")


def cmd_merge_lora(args: argparse.Namespace) -> int:
    """Merge LoRA weights into the ONNX UNet / text encoder and write a new model directory."""
    import json as _json
    from dataclasses import asdict

    from .lora_merge import LoraMergeError, LoraSpec, format_report, merge_loras
    from .safetensors_io import SafetensorsError

    try:
        reports = merge_loras(args.model_dir, args.out, [LoraSpec.parse(t) for t in args.lora], args.strict)
    except (LoraMergeError, SafetensorsError) as exc:
        raise BadInput(str(exc)) from None
    except ImportError:
        raise BadInput("merging LoRAs needs the onnx package: pip install 'exo-rk[tools]'") from None
    print(_json.dumps([asdict(r) for r in reports], indent=1) if args.json else format_report(reports))
    print(f"wrote {args.out}: convert it for the NPU, then name it as a mode's model", file=sys.stderr)
    return 0


def _add_kserve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-name", default="model", help="the name in /v1/models/<name>:predict (default: model)")
    p.add_argument("--model-root", type=Path, default=None,
                   help="an LCM model directory, served as mode 'default' (or $MODEL_ROOT / --modes)")
    p.add_argument("--modes", type=Path, default=None, help="a modes.yaml (default $MODES_PATH)")
    p.add_argument("--port", "--http-port", dest="port", type=int, default=8080,
                   help="REST port (default 8080, KServe's; 0 picks a free one)")
    p.add_argument("--port-file", type=Path, default=None, help="write the REST port here before serving")
    p.add_argument("--grpc-port", type=int, default=None, help="also serve KServe's gRPC protocol on this port")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cmd_kserve(args: argparse.Namespace) -> int:
    """Serve text-to-image through KServe's model server (V1 and V2 protocols, readiness); needs the kserve extra."""
    try:
        from kserve import ModelServer

        from .kserve_model import LCMKServeModel
    except ImportError:
        raise BadInput("image-engine kserve needs the kserve package: pip install 'exo-rk[kserve]'") from None
    from .generate_service import GenerateService
    from .sr_service import SRService

    def build() -> GenerateService:
        config = PROGRAM.from_env()  # the IMAGE_ENGINE_* settings (and seed aliases) of `image-engine serve`
        chosen = {"model_root": args.model_root, "modes_path": args.modes}
        gen = replace(config.generate, **{k: v for k, v in chosen.items() if v is not None})
        return GenerateService(gen, sr=SRService(config.sr))

    model = LCMKServeModel(args.model_name, build)
    model.load()
    port = args.port or _free_port()  # kserve's server takes a number; 0 is resolved here
    server = ModelServer(http_port=port, grpc_port=args.grpc_port or 8081,
                         enable_grpc=args.grpc_port is not None, enable_latency_logging=False)
    if args.port_file is not None:
        _write_port_file(args.port_file, port)
    log.info("KServe model server: model %r on port %d (all interfaces, as KServe serves a pod)",
             args.model_name, port)
    try:
        server.start([model])
    finally:
        model.stop()
    return 0


# name → (help, argument builder, handler). Other subcommands register here.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "serve": ("serve the HTTP API (/superres, /health)", _add_serve_args, cmd_serve),
    "upscale": ("upscale an image file x3 per pass", _add_upscale_args, cmd_upscale),
    "make-tiny-model": ("write a tiny random LCM model set", _add_tiny_model_args, cmd_make_tiny_model),
    "convert": ("convert ONNX models to .rknn for a board (needs rknn-toolkit2)", add_convert_args, cmd_convert),
    "kserve": ("serve text-to-image as a KServe model server", _add_kserve_args, cmd_kserve),
    "merge-lora": ("merge LoRA weights into an LCM model's ONNX files", _add_merge_lora_args, cmd_merge_lora),
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
    except (SettingsError, ImageEngineError, OSError) as exc:
        print(f"image-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) or getattr(exc, "status", 500) < 500 else 1
