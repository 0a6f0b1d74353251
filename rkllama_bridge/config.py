"""The bridge's settings: one typed model, from which :data:`PROGRAM` generates the ``serve`` flags, the
``RKLLAMA_BRIDGE_*`` variables, the ``--config`` file keys and the README's table.

The image routes the bridge mounts are configured by the same models as ``image-engine serve``, here under
``--sr-*`` / ``RKLLAMA_BRIDGE_SR_*`` and ``--image-*`` / ``RKLLAMA_BRIDGE_IMAGE_*``: inside the bridge the
standalone names (``SR_*``, ``QUEUE_MAX``, ``MODEL_ROOT``, ``PORT``...) are not read, so a variable meant for
another program on the board cannot change the bridge. To add a setting, add one ``setting(...)`` line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional

from image_engine.config import MULTIPART_FRAMING, GenConfig, SRConfig
from image_engine.config import PROGRAM as IMAGE_PROGRAM
from rk_common.settings import Program, SettingsError, section, setting

from .errors import BadRequest
from .lifecycle import parse_keep_alive
from .runtimes import RUNTIME_NAMES

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 2**20


def _keep_alive(text: str) -> str:
    try:
        parse_keep_alive(text.strip())
    except BadRequest:
        raise ValueError('must be a duration such as "5m", a number of seconds, 0 or -1') from None
    return text.strip()


def _bridge_sr() -> SRConfig:
    # The bridge's body cap covers the image routes too: uploads default to what fits under it (and follow
    # --max-body-bytes when it is changed).
    return SRConfig(max_upload_bytes=DEFAULT_MAX_BODY - MULTIPART_FRAMING)


@dataclass(frozen=True)
class BridgeConfig:
    """Settings of ``rkllama-bridge serve``."""

    models_dir: Optional[Path] = setting(None, "model store: DIR/<name>/Modelfile", name="models",
                                         shown="the embedded SmolLM2-135M-Instruct")
    runtime: str = setting("host", "rkllm on a board, host (CPU via transformers) or sim (RK3588 timing twin)",
                           choices=RUNTIME_NAMES)
    host: str = setting("127.0.0.1", "bind address (another one without a token is warned about)")
    port: int = setting(8080, "port (0 picks a free one)", minimum=0)
    port_file: Optional[Path] = setting(None, "write the bound port here once listening")
    token: Optional[str] = setting(None, "bearer token required on every route but /health")
    queue_max: int = setting(8, "requests that may wait per model (then 429)", minimum=0)
    instances: int = setting(1, "handles per model (RKLLM >= 1.2.2 supports several)", minimum=1)
    threads: Optional[int] = setting(None, "HTTP worker threads", minimum=1, shown="max(16, 2 x queue_max + 8)")
    max_body_bytes: int = setting(DEFAULT_MAX_BODY, "request body size cap (JSON 413 above), image uploads included",
                                  minimum=1)
    preload: tuple[str, ...] = setting((), "load this model at start (repeatable; comma-separated in env)")
    request_timeout: Optional[float] = setting(None, "deadline of each request in seconds, queue included: a "
                                               "request still queued then gets 503, a running one is cut "
                                               "(finish 'timeout')", positive=True,
                                               why="none: the client's deadline decides (exo: first_token_timeout "
                                                   "300 s); a client that goes away aborts its generation")
    images: bool = setting(True, "mount the image routes (/image/superres, /image/generate, ...)")
    chat_max_images: int = setting(4, "images one chat request may carry (vision models; then 400)", minimum=0)
    chat_max_image_bytes: int = setting(4 * 2**20, "bytes of one chat image, after base64 (then 400)", minimum=1)
    chat_max_image_pixels: int = setting(16 * 2**20, "pixels of one chat image, read from its header before "
                                         "decoding (then 400: decompression bombs cost nothing)", minimum=1)
    sim_profile: Optional[str] = setting(None, "sim runtime profile, e.g. qwen2.5-1.5b-rk3588",
                                         shown="qwen2.5-1.5b-rk3588")
    sim_decode_tok_s: Optional[float] = setting(None, "override the profile's decode speed (0 = unthrottled)",
                                                minimum=0)
    sim_prefill_ms_per_token: Optional[float] = setting(None, "override the profile's prefill speed", minimum=0)
    sim_load_s: Optional[float] = setting(None, "override the profile's load time", minimum=0)
    record_prompts: Optional[Path] = setting(None, "append each generation's prompt token ids to this JSONL file")
    rkllm_lib: Optional[str] = setting(None, "path of librkllmrt.so", aliases=("RKLLM_LIB",),
                                       shown="the usual places")
    rkllm_abi: Optional[str] = setting(None, "force the RKLLM ABI (1.1, 1.2, 1.3)", aliases=("RKLLM_ABI",),
                                       shown="detected from the library")
    rkllm_stall_timeout: float = setting(240.0, "seconds without output from librkllmrt after which a run ends "
                                         "with an error", aliases=("RKLLM_STALL_TIMEOUT_S",), positive=True,
                                         why="longer than any prefill a board does, shorter than exo's first-token "
                                             "wait (300 s), so the bridge reports a hung runtime before the client "
                                             "gives up (it was 600)")
    prefix_reuse: bool = setting(True, "reuse each handle's KV cache when a prompt extends the previous turn")
    keep_alive: Optional[str] = setting(None, "how long a model stays loaded after its last request, as Ollama's "
                                        "keep_alive: \"5m\", seconds, 0 = unload at once, -1 = forever",
                                        parse=_keep_alive, shown="5m", why="Ollama's")
    max_memory_mb: Optional[float] = setting(None, "unload least recently used idle models when a load would go "
                                             "over this much model memory", positive=True)
    state_file: Optional[Path] = setting(None, "remember the loaded models here and load them again at start",
                                         shown="under the user cache dir, per models dir and port")
    restore: bool = setting(True, "load the models that were loaded before the last stop")
    npu_concurrent: bool = setting(False, "let LLM generation and image jobs use the NPU at the same time",
                                   why="off: concurrent use can freeze the NPU on RK3588, so they take turns "
                                       "per token / step")
    header_timeout: float = setting(10.0, "seconds a request's head may take to arrive from its first byte, however "
                                    "slowly it trickles in (then 408 and the connection closes)", positive=True,
                                    why="a slowloris client resets no timer: 10 s is ample for any real client")
    max_connections: int = setting(500, "open connections beyond which a new one gets a JSON 503 with Retry-After",
                                   minimum=1, why="well above the threads: idle keep-alive clients hold one each")
    shutdown_grace: float = setting(30.0, "seconds a SIGTERM/SIGINT leaves running replies to finish (new ones get "
                                    "503) before they are cut with finish 'shutdown'; a second signal exits at "
                                    "once", minimum=0, why="Kubernetes' default terminationGracePeriodSeconds")
    log_level: str = setting("INFO", "logging level", aliases=("RKLLAMA_BRIDGE_LOG",))
    sr: SRConfig = section(_bridge_sr, "sr_")
    generate: GenConfig = section(GenConfig, "image_")

    @property
    def wsgi_threads(self) -> int:
        # Every queued or streaming request holds a thread; leave room for /health and rejections.
        return self.threads or max(16, 2 * self.queue_max + 8)

    @property
    def upload_room(self) -> int:
        """The largest upload that fits under the body cap with its multipart framing."""
        return max(1, self.max_body_bytes - MULTIPART_FRAMING)

    def __post_init__(self) -> None:
        # Left at its default, the upload limit follows --max-body-bytes (the cap every route shares).
        if self.sr.max_upload_bytes == _bridge_sr().max_upload_bytes and self.sr.max_upload_bytes > self.upload_room:
            object.__setattr__(self, "sr", replace(self.sr, max_upload_bytes=self.upload_room))

    def validate(self) -> None:
        """Refuse settings that contradict each other (one line, naming both)."""
        if self.images and self.sr.max_upload_bytes > self.upload_room:
            raise SettingsError(f"sr_max_upload_bytes ({self.sr.max_upload_bytes}) plus multipart framing does "
                                f"not fit under max_body_bytes ({self.max_body_bytes}): raise --max-body-bytes "
                                "or lower --sr-max-upload-bytes")

PROGRAM = Program("rkllama-bridge serve", BridgeConfig, "RKLLAMA_BRIDGE_")


def image_env_for_bridge(env: Mapping[str, str]) -> dict[str, str]:
    """The bridge's names for the standalone image-engine variables set in ``env`` (``SR_QUEUE_MAX`` →
    ``RKLLAMA_BRIDGE_SR_QUEUE_MAX``, ``MODEL_ROOT`` → ``RKLLAMA_BRIDGE_IMAGE_MODEL_ROOT``...)."""
    bridge_leaves = {leaf.path: leaf for leaf in PROGRAM.leaves if len(leaf.path) > 1}  # the image sections
    translated = {}
    for leaf in IMAGE_PROGRAM.leaves:
        ours = bridge_leaves.get(leaf.path)
        for name in IMAGE_PROGRAM.env_names(leaf):
            if env.get(name) and ours is not None:
                translated[PROGRAM.env_names(ours)[0]] = env[name]
    return translated


def warn_ignored_image_names(env: Mapping[str, str]) -> list[str]:
    """Log the standalone image-engine aliases set in ``env``: the bridge does not read them. Returns them."""
    ignored = [name for name in image_aliases() if env.get(name)]
    for name in ignored:
        log.warning("%s is set but the bridge does not read it (it configures image-engine serve); use %s",
                    name, next(iter(image_env_for_bridge({name: env[name]}))))
    return ignored


def image_aliases() -> list[str]:
    """The seed-compatible variables of ``image-engine serve`` that configure a setting the bridge also has."""
    bridge_paths = {leaf.path for leaf in PROGRAM.leaves if len(leaf.path) > 1}
    return [alias for leaf in IMAGE_PROGRAM.leaves if leaf.path in bridge_paths for alias in leaf.aliases]
