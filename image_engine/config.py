"""Configuration of image_engine: frozen dataclasses filled from environment variables and CLI flags.

The ``SR_*`` variables and ``PORT`` keep the names and defaults of the LCM super-resolution server this
engine replaces; the variables marked "new" are additions.

=====================  ============  ==========================================================
variable               default       meaning
=====================  ============  ==========================================================
SR_ENABLED             1             0 switches ``/superres`` off (it answers 503)
SR_MODEL_PATH          (packaged)    ``.onnx`` or ``.rknn`` ESPCN-style model; the embedded
                                     ``espcn_x3.onnx`` when unset
SR_INPUT_SIZE          224           tile side fed to the model (fixed-shape models need theirs)
SR_OUTPUT_SIZE         672           tile side the model returns; the ratio is the scale
SR_NUM_WORKERS         1             worker threads, one runtime each (RKNN worker i → core i%3)
SR_QUEUE_MAX           32            queued jobs beyond the running ones; more → 429
SR_MAX_PIXELS          12000000      max pixels fed to any pass (input, and input x9 for the
                                     second pass...); more → 413
SR_REQUEST_TIMEOUT     120           seconds from queueing to result; the job is then cancelled
SR_BACKEND (new)       auto          auto | onnxruntime | rknnlite
SR_THREADS (new)       0             onnxruntime threads per worker (0: onnxruntime's choice)
SR_TILE_MARGIN (new)   6             context pixels around each tile (>= model receptive radius)
SR_TILE_BLEND (new)    6             width of the linear blending ramp between tiles
SR_MAX_UPLOAD_BYTES    52428800      largest accepted upload (new)
SR_PNG_COMPRESSION     1             zlib level for PNG answers, 0-9 (new)
PORT                   4200          listening port of ``image-engine serve``
IMAGE_ENGINE_TOKEN     (none)        bearer token required on every route but /health (new)
=====================  ============  ==========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Optional

DEFAULT_SR_MODEL = Path(__file__).resolve().parent / "models" / "espcn_x3.onnx"
DEFAULT_PORT = 4200


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _parse(name: str, raw: str, kind: type):
    try:
        if kind is bool:
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


@dataclass(frozen=True)
class SRConfig:
    """Super-resolution settings (see the module docstring for the environment variables)."""

    enabled: bool = True
    model_path: Path = DEFAULT_SR_MODEL
    input_size: int = 224
    output_size: int = 672
    num_workers: int = 1
    queue_max: int = 32
    max_pixels: int = 12_000_000
    request_timeout: float = 120.0
    backend: str = "auto"
    threads: int = 0
    npu_gate: Optional[Callable[[], ContextManager]] = field(default=None, compare=False)  # set by the bridge
    tile_margin: int = 6
    tile_blend: int = 6
    max_upload_bytes: int = 50 * 1024 * 1024
    png_compression: int = 1
    max_magnitude: int = 3

    @property
    def scale(self) -> int:
        """The model's upscaling factor per pass."""
        return self.output_size // self.input_size

    def validate(self) -> "SRConfig":
        """Return self, or raise :class:`ConfigError` naming the bad setting."""
        if self.input_size < 1 or self.output_size % self.input_size or self.scale < 2:
            raise ConfigError(f"SR_OUTPUT_SIZE ({self.output_size}) must be an integer multiple >= 2 of "
                              f"SR_INPUT_SIZE ({self.input_size})")
        if self.input_size - 2 * self.tile_margin - self.tile_blend < 1:
            raise ConfigError(f"SR_INPUT_SIZE ({self.input_size}) leaves no room for SR_TILE_MARGIN "
                              f"({self.tile_margin}) x2 plus SR_TILE_BLEND ({self.tile_blend})")
        for name in ("num_workers", "queue_max", "max_pixels", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SR_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.tile_margin < 0 or self.tile_blend < 0:
            raise ConfigError("SR_TILE_MARGIN and SR_TILE_BLEND must be >= 0")
        if self.request_timeout <= 0:
            raise ConfigError(f"SR_REQUEST_TIMEOUT must be > 0, got {self.request_timeout}")
        if self.backend not in ("auto", "onnxruntime", "rknnlite"):
            raise ConfigError(f"SR_BACKEND must be auto, onnxruntime or rknnlite, got {self.backend!r}")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError(f"SR_PNG_COMPRESSION must be 0-9, got {self.png_compression}")
        return self

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides) -> "SRConfig":
        """Read ``SR_<FIELD>`` variables (e.g. ``SR_MODEL_PATH``); ``overrides`` win over the environment."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            if f.name == "npu_gate":
                continue  # code-only: the bridge's arbiter
            var = f"SR_{f.name.upper()}"
            if var in env and env[var] != "":
                kind = {"model_path": Path}.get(f.name, type(f.default))
                values[f.name] = Path(env[var]).expanduser() if kind is Path else _parse(var, env[var], kind)
        values.update(overrides)
        return cls(**values).validate()


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the ``image-engine serve`` process."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_file: Optional[Path] = None
    http_threads: int = 0
    sr: SRConfig = field(default_factory=SRConfig)
    token: Optional[str] = None  # bearer token every route but /health needs; IMAGE_ENGINE_TOKEN (new)
    max_json_bytes: int = 1024 * 1024  # largest JSON request body (new)

    @property
    def max_body_bytes(self) -> int:
        """The cap on any request body: the largest upload plus room for its multipart framing."""
        return max(self.sr.max_upload_bytes + 64 * 1024, self.max_json_bytes)

    @property
    def effective_http_threads(self) -> int:
        """Enough HTTP threads for every running and queued job plus a few for health checks."""
        if self.http_threads:
            return self.http_threads
        return min(64, max(8, self.sr.num_workers + self.sr.queue_max + 4))

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides) -> "EngineConfig":
        """``PORT`` and the ``SR_*`` variables; ``overrides`` (from CLI flags) win."""
        env = os.environ if env is None else env
        values: dict = {"sr": SRConfig.from_env(env)}
        if env.get("PORT"):
            values["port"] = _parse("PORT", env["PORT"], int)
        if env.get("IMAGE_ENGINE_TOKEN"):
            values["token"] = env["IMAGE_ENGINE_TOKEN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
