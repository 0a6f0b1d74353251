"""The settings of ``image-engine serve`` (and of the image routes a bridge mounts): one typed model.

:data:`PROGRAM` generates the flags, the ``IMAGE_ENGINE_*`` variables, the ``--config`` file keys and the
README's table from the fields below. The seed servers' names (``SR_*``, ``PORT``, ``QUEUE_MAX``,
``NUM_WORKERS``, ``DEFAULT_*``, ``MODEL_ROOT``, ``MODES_PATH``, ``OUTPUTS_DIR``, ``LCM_BACKEND``...) stay
documented aliases of the standalone program; a bridge reads the same settings under its own prefix only.
To add a setting, add one ``setting(...)`` line to the model it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Optional

from rk_common.settings import Program, SettingsError, section, setting

if TYPE_CHECKING:
    from .modes import ModeDefaults

DEFAULT_SR_MODEL = Path(__file__).resolve().parent / "models" / "espcn_x3.onnx"
DEFAULT_PORT = 4200
BACKENDS = ("auto", "onnxruntime", "rknnlite")


class ConfigError(SettingsError):
    """A configuration value is missing or malformed; the message names the variable."""


def _size(text: str) -> tuple[int, int]:
    from .modes import parse_size  # modes pulls in yaml: only when a size is given

    try:
        return parse_size(text)
    except ValueError:
        raise ValueError("must be WIDTHxHEIGHT, e.g. 512x512") from None


@dataclass(frozen=True)
class SRConfig:
    """Super-resolution settings (``SR_*`` in the standalone program)."""

    enabled: bool = setting(True, "serve /superres; off: it answers 503")
    model_path: Path = setting(DEFAULT_SR_MODEL, ".onnx (onnxruntime) or .rknn (RKNNLite) ESPCN-style model; "
                               "the server does not start if it is missing or unusable", shown="embedded espcn_x3.onnx")
    input_size: int = setting(224, "tile side fed to the model (fixed-shape models need theirs; checked at start)",
                              minimum=1)
    output_size: int = setting(672, "tile side the model returns; output/input is the scale", minimum=1)
    num_workers: int = setting(1, "worker threads, one runtime each (RKNN worker i runs on NPU core i % 3)",
                               minimum=1)
    queue_max: int = setting(32, "jobs that may wait for a worker; more get 429", minimum=1)
    max_pixels: int = setting(12_000_000, "most pixels any pass may feed the model (input, input x9 for a second "
                              "pass...); more get 413", minimum=1)
    request_timeout: float = setting(120.0, "seconds from queueing to result; the job is then cancelled (504)",
                                     positive=True, why="the seed's; under exo's image_step_timeout (150 s), "
                                                        "so the 504 reaches the client first")
    backend: str = setting("auto", "auto (by file suffix), onnxruntime or rknnlite", choices=BACKENDS)
    threads: int = setting(0, "onnxruntime threads per worker (0: onnxruntime's choice)", minimum=0)
    npu_gate: Optional[Callable[[], ContextManager]] = field(default=None, compare=False)  # set by the bridge
    tile_margin: int = setting(6, "context pixels around each tile (at least the model's receptive radius)",
                               minimum=0)
    tile_blend: int = setting(6, "width of the linear blending ramp between tiles", minimum=0)
    max_upload_bytes: int = setting(50 * 1024 * 1024, "largest accepted upload; more get 413", minimum=1)
    png_compression: int = setting(1, "zlib level of PNG answers, 0-9 (1 is fast; 6 is ~18 % smaller, ~5x slower)",
                                   minimum=0)
    max_magnitude: int = setting(3, "most x3 passes a request may ask for", minimum=1)

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
        if self.backend not in BACKENDS:
            raise ConfigError(f"SR_BACKEND must be auto, onnxruntime or rknnlite, got {self.backend!r}")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError(f"SR_PNG_COMPRESSION must be 0-9, got {self.png_compression}")
        return self


@dataclass(frozen=True)
class GenConfig:
    """Text-to-image settings (``MODES_PATH``, ``MODEL_ROOT``, ``NUM_WORKERS``, ``DEFAULT_*``... standalone)."""

    modes_path: Optional[Path] = setting(None, "modes file (model dir + defaults per mode), reloaded on change",
                                         shown="./modes.yaml if it exists")
    model_root: Optional[Path] = setting(None, "legacy: one LCM model directory, served as mode \"default\"")
    num_workers: int = setting(1, "generation workers, one set of runtimes each (RKNN: core i % 3)", minimum=1)
    queue_max: int = setting(64, "generations that may wait for a worker; more get 429", minimum=1)
    default_size: Optional[tuple[int, int]] = setting(None, "size when neither the request nor the mode gives "
                                                      "one; unset: the model's (unet/config.json sample_size), "
                                                      "else 512x512", parse=_size, shown="the model's")
    default_steps: int = setting(4, "steps likewise", minimum=1)
    default_guidance: float = setting(1.0, "guidance scale likewise")
    default_timeout: float = setting(120.0, "seconds from queueing to result; the job is then cancelled (504)",
                                     positive=True, why="the seed's; under exo's image_step_timeout (150 s), "
                                                        "so the 504 reaches exo before it gives up on a step")
    backend: str = setting("auto", "auto, onnxruntime or rknnlite", name="lcm_backend", choices=BACKENDS)
    outputs_dir: Path = setting(Path("outputs"), "where /inference saves its images", shown="./outputs")
    watch_interval: float = setting(1.0, "seconds between modes-file checks; 0 disables polling",
                                    name="modes_watch_interval", minimum=0)
    npu_gate: Optional[Callable[[], ContextManager]] = field(default=None, compare=False)  # set by the bridge

    @property
    def defaults(self) -> ModeDefaults:
        from .modes import ModeDefaults

        return ModeDefaults(self.default_size, self.default_steps, self.default_guidance)

    @property
    def modes_file(self) -> Optional[Path]:
        """The modes file in use: ``modes_path``, else ``./modes.yaml`` when it exists (the seed's layout)."""
        if self.modes_path is not None:
            return self.modes_path
        return Path("modes.yaml") if Path("modes.yaml").is_file() else None

    @property
    def configured(self) -> bool:
        """True when a modes file or a model root says what to serve."""
        return self.modes_file is not None or self.model_root is not None

    def validate(self) -> "GenConfig":
        if self.num_workers < 1 or self.queue_max < 1:
            raise ConfigError("NUM_WORKERS and QUEUE_MAX must be >= 1")
        if self.default_timeout <= 0:
            raise ConfigError("DEFAULT_TIMEOUT must be > 0")
        if self.backend not in BACKENDS:
            raise ConfigError(f"LCM_BACKEND must be auto, onnxruntime or rknnlite, got {self.backend!r}")
        return self


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the ``image-engine serve`` process."""

    host: str = setting("127.0.0.1", "interface to listen on")
    port: int = setting(DEFAULT_PORT, "port (0 picks a free one)", aliases=("PORT",), minimum=0)
    port_file: Optional[Path] = setting(None, "write the bound port here once listening")
    http_threads: int = setting(0, "HTTP threads (0: workers + queues + 4, at most 64)", name="threads", minimum=0)
    token: Optional[str] = setting(None, "bearer token required on every route but /health")
    max_json_bytes: int = setting(1024 * 1024, "largest JSON request body", minimum=1)
    header_timeout: float = setting(10.0, "seconds a request's head may take from its first byte (then 408)",
                                    minimum=0.001)
    max_connections: int = setting(500, "open connections beyond which a new one gets a JSON 503", minimum=1)
    sr: SRConfig = section(SRConfig, "sr_", alias_prefix="SR_")
    generate: GenConfig = section(GenConfig, "", alias_prefix="")

    @property
    def max_body_bytes(self) -> int:
        """The cap on any request body: the largest upload plus room for its multipart framing."""
        return max(self.sr.max_upload_bytes + MULTIPART_FRAMING, self.max_json_bytes)

    @property
    def effective_http_threads(self) -> int:
        """Enough HTTP threads for every running and queued job plus a few for health checks."""
        if self.http_threads:
            return self.http_threads
        return min(64, max(8, self.sr.num_workers + self.sr.queue_max + 4))


MULTIPART_FRAMING = 64 * 1024  # room for the multipart envelope around an upload

PROGRAM = Program("image-engine serve", EngineConfig, "IMAGE_ENGINE_")
