"""Building and running a bridge from its config: store, runtime, service, Flask app, waitress."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from rk_common.chat_images import ImageLimits
from rk_common.graceful import GracefulStop

from .app import create_app
from .config import BridgeConfig, warn_ignored_image_names
from .default_model import DEFAULT_MODEL_NAME, ensure_default_model
from .errors import BadRequest
from .lifecycle import DEFAULT_KEEP_ALIVE_S, default_state_path, parse_keep_alive
from .runtimes import RuntimeUnavailable, create_runtime, require_host_extra
from .service import BridgeService, ServiceOptions
from .store import ModelStore

log = logging.getLogger(__name__)


def build_service(config: BridgeConfig) -> BridgeService:
    default_model: Optional[str] = None
    if config.models_dir is None:
        require_host_extra("the embedded default model (no --models directory given)")
        root = ensure_default_model().parent
        default_model = DEFAULT_MODEL_NAME
    else:
        root = config.models_dir
        if not root.is_dir():
            raise SystemExit(f"rkllama-bridge: models directory {root} does not exist")
    store = ModelStore(root)
    sim_overrides = {k: v for k, v in (("decode_tok_s", config.sim_decode_tok_s),
                                       ("prefill_ms_per_token", config.sim_prefill_ms_per_token),
                                       ("load_s", config.sim_load_s)) if v is not None}
    runtime = create_runtime(config.runtime, sim_profile=config.sim_profile, sim_overrides=sim_overrides,
                             tokenizer_for=lambda name: store.get(name).tokenizer, threads=None,
                             rkllm_lib=config.rkllm_lib, rkllm_abi=config.rkllm_abi,
                             rkllm_stall_timeout_s=config.rkllm_stall_timeout)
    try:
        keep_alive = DEFAULT_KEEP_ALIVE_S if config.keep_alive is None else parse_keep_alive(config.keep_alive)
    except BadRequest as exc:
        raise SystemExit(f"rkllama-bridge: --keep-alive: {exc.message}") from None
    options = ServiceOptions(queue_max=config.queue_max, instances=config.instances,
                             record_prompts=config.record_prompts, default_model=default_model,
                             prefix_reuse=config.prefix_reuse, keep_alive_s=keep_alive,
                             max_memory_mb=config.max_memory_mb, npu_concurrent=config.npu_concurrent,
                             state_file=config.state_file or default_state_path(root, config.port),
                             request_timeout_s=config.request_timeout or None,
                             image_limits=ImageLimits(config.chat_max_images, config.chat_max_image_bytes,
                                                      config.chat_max_image_pixels))
    return BridgeService(store, runtime, options)


def serve(config: BridgeConfig) -> int:
    from rk_common.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any request thread exists
    service = build_service(config)
    log.info("runtime: %s", service.runtime.describe().get("label"))
    for name in config.preload:
        service.load(name)
    if config.restore:
        service.restore()
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        log.warning("binding %s without a token: anyone on the network can use this bridge", config.host)
    app = create_app(service, token=config.token, max_body_bytes=config.max_body_bytes)
    if config.images and not mount_images(app, service, config):
        config = dataclasses.replace(config, images=False)
    server = create_server(app, config)
    port = server.effective_port
    if config.port_file:
        tmp = Path(str(config.port_file) + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(config.port_file)
    print(f"rkllama-bridge listening on http://{config.host}:{port} ({len(service.store.names())} models in "
          f"{service.store.root}, runtime {service.runtime.name})", flush=True)

    stopper = GracefulStop(server, grace_s=config.shutdown_grace, begin=service.begin_drain,
                           busy=service.open_requests, cut=service.end_running, name="rkllama-bridge")
    stopper.install()
    try:
        server.run()
    finally:
        # Stop generating first, so streaming requests end at once and their threads are free to join.
        for entry in service.loaded():
            for handle in entry.queue.handles:
                handle.abort()
        server.close()
        service.close()
        if config.images:
            from image_engine.app import close_app

            close_app(app)
    log.info("stopped%s", " (running replies were cut)" if stopper.was_cut else "")
    return 0


def create_server(app, config: BridgeConfig):
    """The HTTP front of the bridge. One thread budget: the default pool serves the LLM routes (every
    queued or streaming request holds a thread), each image service has a lane sized to its workers and
    queue, and /health and /metrics have threads that no queued work can take."""
    from rk_common.http_front import create_front_server, ops_lane

    lanes = [ops_lane()]
    if config.images:
        from image_engine.app import image_lanes

        lanes += image_lanes(app, "/image")
    server = create_front_server(app, host=config.host, port=config.port, threads=config.wsgi_threads,
                                 lanes=lanes, header_timeout_s=config.header_timeout,
                                 max_connections=config.max_connections, channel_request_lookahead=1,
                                 # waitress's own limit only guards against absurd bodies; the app's
                                 # limit below it answers a 413 with the limit in the message.
                                 max_request_body_size=4 * config.max_body_bytes, ident="rkllama-bridge")
    app.config["HTTP_LANES"] = server.lane_stats
    budget = sum(lane["threads"] for lane in server.lane_stats().values() if "threads" in lane)
    log.info("thread budget %d: %s", budget, ", ".join(f"{name} {lane['threads']}" for name, lane in
                                                       server.lane_stats().items() if "threads" in lane))
    return server


# Libraries of the `images` extra that the image routes import when they are mounted.
IMAGES_EXTRA = ("regex", "onnxruntime")


def mount_images(app, service: BridgeService, config: BridgeConfig) -> bool:
    """The image engine's routes in this process, so one bridge owns the NPU for LLM and images alike:
    every image model call takes its turn from the same arbiter as LLM tokens. Without the ``images`` extra
    (the core install of a board that serves LLMs only) the image routes stay off, with a warning saying so."""
    try:
        from image_engine.app import mount_image_routes
        from image_engine.config import EngineConfig
    except ModuleNotFoundError as exc:
        if exc.name not in IMAGES_EXTRA:
            raise
        log.warning("image routes off: the image service needs %s, from the images extra "
                    "(pip install 'exo-rk[images]')", exc.name)
        return False

    warn_ignored_image_names(os.environ)
    mount_image_routes(app, EngineConfig(sr=config.sr, generate=config.generate),
                       npu_gate=lambda: service.arbiter.turn("image"))
    return True


def main_serve(config: BridgeConfig) -> int:
    try:
        return serve(config)
    except (FileNotFoundError, RuntimeUnavailable) as exc:
        print(f"rkllama-bridge: {exc}", file=sys.stderr)
        return 2
