"""LCM text-to-image: tokenizer → text encoder → UNet loop → VAE decoder, through the runtime interface.

A model directory has the diffusers/optimum layout: ``text_encoder/``, ``unet/``, ``vae_decoder/`` (each
``model.onnx`` or ``model.rknn`` plus ``config.json``), ``tokenizer/`` and ``scheduler/``. Runtimes take
and give NCHW; the RKNN backend converts at its boundary. One ``numpy.random.RandomState(seed)`` draws the
initial latents and every step's noise, so a seed fixes the image bit for bit on a given backend.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .clip_tokenizer import CLIPTokenizer
from .errors import BadInput, RuntimeFailure
from .lcm import LCMConfig, LCMScheduler, guidance_embedding

if TYPE_CHECKING:
    from .runtimes import ModelRuntime
    from .workers import CancelToken

log = logging.getLogger(__name__)

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
VAE_SCALE = 8
MAX_SEED = 2 ** 32 - 1
# Bounds for models whose ONNX graphs accept any latent size.
MIN_SIDE, MAX_SIDE = 64, 2048

RuntimeLoader = Callable[[Path, str, int], "ModelRuntime"]


@dataclass(frozen=True)
class GenerateParams:
    """One text-to-image request, already validated and filled from the mode's defaults."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int


@dataclass(frozen=True)
class StepEvent:
    """Reported after each UNet step: ``step`` counts from 1 to ``total_steps``."""

    step: int
    total_steps: int
    timestep: int


@dataclass
class Generation:
    """A finished generation: ``image`` is HxWx3 float32 in [0, 1]; ``model_seconds`` sums the model calls."""

    image: np.ndarray
    params: GenerateParams
    seconds: float
    model_seconds: dict[str, float] = field(default_factory=dict)


class ModelFiles:
    """The files of one LCM model directory, and what the configs say about it (no runtime loaded)."""

    def __init__(self, root: Path, backend: str = "auto"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model directory {self.root} does not exist")
        self.backend = backend
        self.paths = {name: self._model_path(name) for name in COMPONENTS}
        self.unet_config = _read_json(self.root / "unet" / "config.json")
        self.vae_config = _read_json(self.root / "vae_decoder" / "config.json")
        sched = self.root / "scheduler" / "scheduler_config.json"
        self.scheduler_config = LCMConfig.from_json(sched) if sched.is_file() else LCMConfig()
        self.tokenizer_dir = self.root / "tokenizer"

    def _model_path(self, name: str) -> Path:
        sub = self.root / name
        onnx_path, rknn_path = sub / "model.onnx", sub / "model.rknn"
        if self.backend == "rknnlite" or (self.backend == "auto" and rknn_path.is_file() and _rknn_usable()):
            if not rknn_path.is_file():
                raise FileNotFoundError(f"{rknn_path} is missing (backend rknnlite)")
            return rknn_path
        if onnx_path.is_file():
            return onnx_path
        if rknn_path.is_file():
            raise FileNotFoundError(f"{sub} has only model.rknn, and RKNNLite is not available on this machine")
        raise FileNotFoundError(f"{sub} has neither model.onnx nor model.rknn")

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config.get("scaling_factor", 0.18215))


class LCMPipeline:
    """Generates images from one model directory with one set of runtimes (one pipeline per worker)."""

    def __init__(self, files: ModelFiles, runtimes: dict[str, ModelRuntime], tokenizer: CLIPTokenizer,
                 fixed_size: tuple[int, int] | None = None):
        self.files = files
        self.runtimes = runtimes
        self.tokenizer = tokenizer
        self.scheduler = LCMScheduler(files.scheduler_config)
        unet = runtimes["unet"]
        for name, want in (("unet", ("sample", "timestep", "encoder_hidden_states", "timestep_cond")),
                           ("text_encoder", ("input_ids",)), ("vae_decoder", ("latent_sample",))):
            missing = [n for n in want if n not in runtimes[name].input_names]
            if missing:
                raise RuntimeFailure(f"{files.paths[name]} lacks input(s) {missing}; it has "
                                     f"{list(runtimes[name].input_names)}")
        self.latent_channels = int(files.unet_config.get("in_channels", 4))
        self.cond_dim = int(files.unet_config.get("time_cond_proj_dim") or 256)
        # RKNNLite converts inputs to the model's own type, so int64 (what ONNX exports declare) suits both.
        self.timestep_dtype = _input_dtype(unet, "timestep", np.int64)
        self.fixed_size = _fixed_size(files, unet, fixed_size)

    @classmethod
    def load(cls, root: Path, backend: str = "auto", core_index: int = 0,
             loader: RuntimeLoader | None = None,
             fixed_size: tuple[int, int] | None = None) -> LCMPipeline:
        """Load the three runtimes of ``root`` (worker ``core_index`` picks the NPU core on RKNN).

        ``backend`` is "auto" (``model.rknn`` when RKNNLite is usable, else ``model.onnx``), "onnxruntime"
        or "rknnlite". ``fixed_size`` (width, height) declares the size an ``.rknn`` UNet was converted for
        (RKNN runtimes cannot tell); ONNX models report their own shapes.
        """
        files = ModelFiles(root, backend)
        if loader is None:
            from .runtimes import load_runtime

            def loader(path: Path, be: str, core: int) -> ModelRuntime:
                return load_runtime(path, be, core_index=core)

        started = time.perf_counter()
        runtimes = {name: loader(files.paths[name], backend, core_index) for name in COMPONENTS}
        tokenizer = CLIPTokenizer.from_dir(files.tokenizer_dir)
        log.info("loaded LCM model %s (%s) on worker core %d in %.2fs", root, runtimes["unet"].backend,
                 core_index, time.perf_counter() - started)
        return cls(files, runtimes, tokenizer, fixed_size)

    def sizes(self) -> list[tuple[int, int]] | None:
        """The (width, height) sizes the model accepts, or None if any multiple of 8 in range works."""
        return None if self.fixed_size is None else [self.fixed_size]

    def check_size(self, width: int, height: int) -> None:
        """Raise :class:`BadInput` naming the accepted sizes if the model cannot make ``width``x``height``."""
        if self.fixed_size is not None:
            if (width, height) != self.fixed_size:
                w, h = self.fixed_size
                raise BadInput(f"size {width}x{height} is not supported: model {self.files.root.name} was "
                               f"built for {w}x{h} only")
            return
        if width % VAE_SCALE or height % VAE_SCALE:
            raise BadInput(f"size {width}x{height}: width and height must be multiples of {VAE_SCALE}")
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise BadInput(f"size {width}x{height}: each side must be between {MIN_SIDE} and {MAX_SIDE}")

    def generate(self, params: GenerateParams, on_step: Callable[[StepEvent], None] | None = None,
                 token: CancelToken | None = None) -> Generation:
        """Run one generation; ``on_step`` after each UNet step, ``token`` checked between steps."""
        self.check_size(params.width, params.height)
        timesteps = self._timesteps(params.steps)
        started = time.perf_counter()
        clock: dict[str, float] = {name: 0.0 for name in COMPONENTS}
        rng = np.random.RandomState(params.seed)
        ids = self.tokenizer(params.prompt)
        hidden = self._run("text_encoder", {"input_ids": ids}, clock)[0].astype(np.float32, copy=False)
        shape = (1, self.latent_channels, params.height // VAE_SCALE, params.width // VAE_SCALE)
        latents = rng.standard_normal(shape).astype(np.float32)
        cond = guidance_embedding(params.guidance, self.cond_dim)
        denoised = latents
        for i, t in enumerate(timesteps):
            if token is not None:
                token.raise_if_cancelled()
            feeds = {"sample": latents, "timestep": np.array([t], dtype=self.timestep_dtype),
                     "encoder_hidden_states": hidden, "timestep_cond": cond}
            eps = self._run("unet", feeds, clock)[0]
            if eps.shape != shape:
                raise RuntimeFailure(f"UNet returned shape {eps.shape}, expected {shape}")
            last = i == len(timesteps) - 1
            noise = None if last else rng.standard_normal(shape).astype(np.float32)
            latents, denoised = self.scheduler.step(eps.astype(np.float32, copy=False), timesteps, i, latents, noise)
            if on_step is not None:
                on_step(StepEvent(i + 1, len(timesteps), int(t)))
        if token is not None:
            token.raise_if_cancelled()
        decoded = self._run("vae_decoder", {"latent_sample": denoised / self.files.scaling_factor}, clock)[0]
        image = _to_image(decoded, params)
        return Generation(image, params, time.perf_counter() - started, clock)

    def _timesteps(self, steps: int) -> np.ndarray:
        try:
            return self.scheduler.timesteps(steps)
        except ValueError as exc:
            raise BadInput(str(exc)) from None

    def _run(self, name: str, feeds: dict[str, np.ndarray], clock: dict[str, float]) -> list[np.ndarray]:
        rt = self.runtimes[name]
        started = time.perf_counter()
        try:
            outs = rt.run(feeds)
        finally:
            clock[name] += time.perf_counter() - started
        if not outs or outs[0] is None:
            raise RuntimeFailure(f"{name} ({rt.path}) returned no output")
        return outs

    def close(self) -> None:
        """Release the runtimes (idempotent; runtimes without ``close`` are left to the garbage collector)."""
        for rt in self.runtimes.values():
            closer = getattr(rt, "close", None)
            if closer is not None:
                closer()
        self.runtimes = {}


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 92, png_compression: int = 1) -> bytes:
    """Encode an HxWx3 float image in [0, 1] once, at the end (PNG is lossless and deterministic)."""
    from .sr_io import OUT_FORMATS, encode

    if fmt not in OUT_FORMATS:
        raise BadInput(f"unknown image format {fmt!r} (png, jpeg or webp)")
    return encode(image, OUT_FORMATS[fmt][2], quality, png_compression)


def _to_image(decoded: np.ndarray, params: GenerateParams) -> np.ndarray:
    want = (1, 3, params.height, params.width)
    if decoded.shape != want:
        raise RuntimeFailure(f"VAE decoder returned shape {decoded.shape}, expected {want}")
    # In place and in float32: this runs on every image, at full resolution.
    image = np.multiply(decoded[0].transpose(1, 2, 0), np.float32(0.5), dtype=np.float32)
    image += np.float32(0.5)
    return np.clip(image, 0.0, 1.0, out=image)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RuntimeFailure(f"{path} is not valid JSON: {exc}") from None


def _rknn_usable() -> bool:
    import importlib.util
    import os

    from .runtimes import FAKE_RKNN_ENV, SIM_RKNN_ENV

    return (any(os.environ.get(var) == "1" for var in (FAKE_RKNN_ENV, SIM_RKNN_ENV))
            or importlib.util.find_spec("rknnlite") is not None)


def _input_dtype(rt: ModelRuntime, name: str, default) -> np.dtype:
    """The declared type of input ``name`` (exports differ: int64, int32 or float timesteps)."""
    return rt.input_dtype(name) or np.dtype(default)


def _fixed_size(files: ModelFiles, unet: ModelRuntime,
                declared: tuple[int, int] | None) -> tuple[int, int] | None:
    """(width, height) if the UNet has a fixed latent shape: from the runtime, else (RKNN) as declared."""
    shapes = getattr(unet, "input_shapes", None)
    if isinstance(shapes, (list, tuple)):
        shapes = dict(zip(unet.input_names, shapes, strict=False))
    shape: Sequence | None = shapes.get("sample") if isinstance(shapes, dict) else None
    if shape is not None and len(shape) == 4:
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return w * VAE_SCALE, h * VAE_SCALE
        return None
    if unet.backend != "onnxruntime":
        # RKNN graphs are static but do not report their shape: the mode declares it, else the config does.
        if declared is not None:
            return declared
        return config_image_size(files.unet_config)
    return None


def config_image_size(unet_config: dict) -> tuple[int, int] | None:
    """(width, height) of the images a UNet config's ``sample_size`` (latent size: int or [h, w]) means."""
    size = unet_config.get("sample_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size * VAE_SCALE, size * VAE_SCALE
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[1]) * VAE_SCALE, int(size[0]) * VAE_SCALE
    return None


def model_image_size(model_dir: Path) -> tuple[int, int] | None:
    """The image size a model directory was made for, from its ``unet/config.json``; None if it says none."""
    try:
        return config_image_size(_read_json(Path(model_dir) / "unet" / "config.json"))
    except RuntimeFailure:
        return None
