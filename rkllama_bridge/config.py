"""The bridge's configuration: one frozen dataclass, filled from CLI flags and environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .runtimes import RUNTIME_NAMES


@dataclass(frozen=True)
class BridgeConfig:
    models_dir: Optional[Path]  # None: the embedded default model (converted and cached on first start)
    runtime: str = "host"
    host: str = "127.0.0.1"
    port: int = 8080
    port_file: Optional[Path] = None
    token: Optional[str] = None  # bearer token; also RKLLAMA_BRIDGE_TOKEN
    queue_max: int = 8
    instances: int = 1
    threads: Optional[int] = None
    max_body_bytes: int = 8 * 2**20
    sim_profile: Optional[str] = None
    sim_decode_tok_s: Optional[float] = None
    sim_prefill_ms_per_token: Optional[float] = None
    sim_load_s: Optional[float] = None
    record_prompts: Optional[Path] = None
    rkllm_lib: Optional[str] = None
    rkllm_abi: Optional[str] = None
    preload: tuple = ()
    request_timeout: Optional[float] = None  # seconds, queue included; None = no deadline
    images: bool = True  # mount the image routes (super-resolution, LCM) under /image
    prefix_reuse: bool = True
    keep_alive: Optional[str] = None  # default keep_alive (Ollama duration); None: 5m
    max_memory_mb: Optional[float] = None
    state_file: Optional[Path] = None
    restore: bool = True
    npu_concurrent: bool = False
    header_timeout: float = 10.0  # seconds a request's head may take from its first byte (then 408)
    max_connections: int = 500  # open connections beyond which a new one gets a JSON 503

    @property
    def wsgi_threads(self) -> int:
        # Every queued or streaming request holds a thread; leave room for /health and rejections.
        return self.threads or max(16, 2 * self.queue_max + 8)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None, help="model store: DIR/<name>/Modelfile (default: the embedded "
                   "SmolLM2-135M-Instruct, converted once into the user cache)")
    p.add_argument("--runtime", choices=RUNTIME_NAMES, default="host", help="rkllm on a board, host (CPU via "
                   "transformers) or sim (RK3588 timing twin)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--token", default=None, help="bearer token required on every route but /health "
                   "(default: $RKLLAMA_BRIDGE_TOKEN)")
    p.add_argument("--queue-max", type=int, default=8, help="requests that may wait per model (then 429)")
    p.add_argument("--instances", type=int, default=1, help="handles per model (RKLLM >= 1.2.2 supports several)")
    p.add_argument("--threads", type=int, default=None, help="HTTP worker threads")
    p.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="request body size cap")
    p.add_argument("--preload", action="append", default=[], help="load this model at start (repeatable)")
    p.add_argument("--request-timeout", type=float, default=None, help="deadline of each request in seconds, "
                   "queue included: a request still queued then gets 503, a running one is cut (finish 'timeout')")
    p.add_argument("--no-images", dest="images", action="store_false", help="do not mount the image routes "
                   "(/image/superres, /image/generate, ...; configured by the SR_* and MODEL_ROOT/MODES_PATH env vars)")
    p.add_argument("--sim-profile", default=None, help="sim runtime profile, e.g. qwen2.5-1.5b-rk3588")
    p.add_argument("--sim-decode-tok-s", type=float, default=None, help="override the profile's decode speed (0 = "
                   "unthrottled)")
    p.add_argument("--sim-prefill-ms-per-token", type=float, default=None)
    p.add_argument("--sim-load-s", type=float, default=None)
    p.add_argument("--record-prompts", type=Path, default=None, help="append each generation's prompt token ids "
                   "to this JSONL file (debugging and tests)")
    p.add_argument("--rkllm-lib", default=None, help="path of librkllmrt.so (default: $RKLLM_LIB or the usual places)")
    p.add_argument("--rkllm-abi", default=None, help="force the RKLLM ABI (1.1, 1.2, 1.3; default: detected)")
    p.add_argument("--no-prefix-reuse", dest="prefix_reuse", action="store_false", help="clear each handle's KV "
                   "cache before every request instead of reusing the previous turn's prefix")
    p.add_argument("--keep-alive", default=None, help="how long a model stays loaded after its last request, as "
                   "Ollama's keep_alive: \"5m\" (default), seconds, 0 = unload at once, -1 = forever")
    p.add_argument("--max-memory-mb", type=float, default=None, help="unload least recently used idle models when "
                   "a load would go over this much model memory")
    p.add_argument("--state-file", type=Path, default=None, help="remember the loaded models here and load them "
                   "again at start (default: under the user cache dir, per models dir and port; none with --port 0)")
    p.add_argument("--no-restore", dest="restore", action="store_false", help="do not load the models that were "
                   "loaded before the last stop")
    p.add_argument("--npu-concurrent", action="store_true", help="let LLM generation and image jobs use the NPU "
                   "at the same time (by default they take turns per token / step: concurrent use can freeze "
                   "the NPU on RK3588)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a request's head may take to "
                   "arrive from its first byte, however slowly it trickles in (then 408 and the connection closes)")
    p.add_argument("--max-connections", type=int, default=500, help="open connections beyond which a new one "
                   "gets a JSON 503 with Retry-After (well above --threads: idle keep-alive clients hold one each)")
    p.add_argument("--log-level", default=os.environ.get("RKLLAMA_BRIDGE_LOG", "INFO"))


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    for name in ("queue_max", "instances"):
        if getattr(args, name) < (0 if name == "queue_max" else 1):
            raise SystemExit(f"rkllama-bridge: --{name.replace('_', '-')} must be >= {0 if name == 'queue_max' else 1}")
    if not args.header_timeout > 0 or args.max_connections < 1:
        raise SystemExit("rkllama-bridge: --header-timeout must be > 0 and --max-connections >= 1")
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise SystemExit("rkllama-bridge: --request-timeout must be a positive number of seconds")
    return BridgeConfig(
        models_dir=args.models, runtime=args.runtime, host=args.host, port=args.port, port_file=args.port_file,
        token=args.token or os.environ.get("RKLLAMA_BRIDGE_TOKEN") or None, queue_max=args.queue_max,
        instances=args.instances, threads=args.threads, max_body_bytes=args.max_body_bytes,
        sim_profile=args.sim_profile, sim_decode_tok_s=args.sim_decode_tok_s,
        sim_prefill_ms_per_token=args.sim_prefill_ms_per_token, sim_load_s=args.sim_load_s,
        record_prompts=args.record_prompts, rkllm_lib=args.rkllm_lib, rkllm_abi=args.rkllm_abi,
        preload=tuple(args.preload), images=args.images, request_timeout=args.request_timeout,
        prefix_reuse=args.prefix_reuse, keep_alive=args.keep_alive,
        max_memory_mb=args.max_memory_mb, state_file=args.state_file, restore=args.restore,
        npu_concurrent=args.npu_concurrent, header_timeout=args.header_timeout,
        max_connections=args.max_connections)
