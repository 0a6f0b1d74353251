"""The super-resolution service: a worker pool of model runtimes and the upload → upscale → encode path."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image

from .config import SRConfig
from .errors import BadInput, ImageEngineError, RuntimeFailure, Unavailable
from .runtimes import ModelRuntime, load_runtime
from .sr import Planes, TileGeometry, Upscaler, upscale_chroma
from .sr_io import OUT_FORMATS, check_pixels, encode_pil, image_to_uint8, open_image, parse_out_format
from .workers import CancelToken, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SRResult:
    """An encoded answer and the headers that describe it."""

    data: bytes
    mimetype: str
    headers: dict
    width: int
    height: int


class _Worker:
    """What one worker thread owns: its runtime (on NPU core ``index % 3``) and a tiler around it."""

    PROGRESS_EVERY = 5.0  # seconds between progress lines of a long job

    def __init__(self, index: int, config: SRConfig, on_tile):
        self.index = index
        self._on_tile = on_tile
        self._done, self._total, self._last_log = 0, 0, 0.0
        self.runtime: ModelRuntime = load_runtime(config.model_path, config.backend, core_index=index,
                                                  threads=config.threads or None, gate=config.npu_gate)
        geometry = TileGeometry(config.input_size, config.scale, config.tile_margin, config.tile_blend)
        self.upscaler = Upscaler(self.runtime, geometry, self._tile_done)
        try:  # fail at start-up, not at the first request, if the model does not fit the tile settings
            self.upscaler.run_model(np.zeros((config.input_size, config.input_size), np.float32))
        except ImageEngineError as exc:
            self.runtime.close()
            raise RuntimeFailure(f"SR model {config.model_path} does not map {config.input_size}px tiles to "
                                 f"{config.output_size}px (SR_INPUT_SIZE/SR_OUTPUT_SIZE): {exc}") from exc

    def run(self, y: np.ndarray, passes: int, token: CancelToken) -> np.ndarray:
        """The luma passes of one job, logging progress every few seconds."""
        g = self.upscaler.geometry
        h, w = y.shape
        self._done, self._last_log = 0, time.monotonic()
        self._total = sum(g.tile_count(h * g.scale ** k, w * g.scale ** k) for k in range(passes))
        t0 = time.monotonic()
        log.info("SR worker %d: %dx%d, %d pass(es), %d tiles", self.index, w, h, passes, self._total)
        out = self.upscaler.upscale_luma(y, passes, token)
        log.info("SR worker %d: %dx%d -> %dx%d in %.2fs", self.index, w, h, out.shape[1], out.shape[0],
                 time.monotonic() - t0)
        return out

    def _tile_done(self) -> None:
        self._done += 1
        self._on_tile()
        now = time.monotonic()
        if self._total and now - self._last_log >= self.PROGRESS_EVERY:
            self._last_log = now
            log.info("SR worker %d: %d/%d tiles (%.0f%%)", self.index, self._done, self._total,
                     100.0 * self._done / self._total)

    def close(self) -> None:
        self.runtime.close()


class SRService:
    """Owns the SR worker pool; every entry point is safe to call from many request threads.

    Raises :class:`RuntimeFailure` at construction when the model is missing or unusable.
    """

    def __init__(self, config: SRConfig):
        self.config = config
        self._lock = threading.Lock()
        self._tiles_run = 0
        self._pool: Optional[WorkerPool] = None
        self._workers: list[dict] = []
        if not config.enabled:
            log.info("super-resolution disabled (SR_ENABLED=0)")
            return
        if not config.model_path.is_file():
            raise RuntimeFailure(f"SR model not found: {config.model_path} (check SR_MODEL_PATH)")
        log.info("starting %d SR worker(s) for %s", config.num_workers, config.model_path)
        self._pool = WorkerPool(config.num_workers, self._make_worker, config.queue_max,
                                close_state=_Worker.close, name="sr-worker")

    def _make_worker(self, index: int) -> _Worker:
        worker = _Worker(index, self.config, self._count_tile)
        with self._lock:
            self._workers.append({"index": index, **worker.runtime.describe(),
                                  "core_mask": getattr(worker.runtime, "core_mask", None)})
        log.info("SR worker %d ready: %s on %s", index, self.config.model_path.name, worker.runtime.backend)
        return worker

    def _count_tile(self) -> None:
        with self._lock:
            self._tiles_run += 1

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    @property
    def model_name(self) -> str:
        return self.config.model_path.name

    def _check_magnitude(self, magnitude: Union[int, str, None]) -> int:
        try:
            passes = int(magnitude if magnitude not in (None, "") else 1)
        except (TypeError, ValueError):
            raise BadInput(f"magnitude must be an integer 1-{self.config.max_magnitude}, "
                           f"got {magnitude!r}") from None
        if not 1 <= passes <= self.config.max_magnitude:
            raise BadInput(f"magnitude must be 1-{self.config.max_magnitude}, got {passes}")
        return passes

    def upscale_array(self, image: np.ndarray, magnitude: int = 1) -> np.ndarray:
        """Upscale an HxWx3/4 image (float in [0, 1] or uint8) by ``scale ** magnitude``; float result.

        Only the luma passes run on a worker (the NPU's part), within SR_REQUEST_TIMEOUT; chroma, alpha and
        colour conversion run in the calling thread, so a worker is free for the next job meanwhile.
        Raises :class:`TooLarge`, :class:`QueueFull`, :class:`JobTimeout` (the job is cancelled) or
        :class:`Unavailable` when SR is switched off.
        """
        return self._upscale_planes(image, magnitude).to_image()

    def _upscale_planes(self, image: np.ndarray, magnitude: Union[int, str, None]) -> Planes:
        if self._pool is None:
            raise Unavailable("super-resolution is disabled on this server (SR_ENABLED=0)")
        passes = self._check_magnitude(magnitude)
        h, w = image.shape[:2]
        check_pixels(w, h, passes, self.config.scale, self.config.max_pixels)
        planes = Planes.from_image(image)
        pending = self._pool.start(lambda worker, token: worker.run(planes.y, passes, token),
                                   timeout=self.config.request_timeout)
        try:  # chroma and alpha need no model: upscale them here while a worker runs the luma passes
            chroma = upscale_chroma(planes, None, self.config.scale, passes)
        except BaseException:
            pending.cancel("the request failed")
            raise
        return Planes(pending.result(), chroma.cb, chroma.cr, chroma.alpha)

    def upscale_image(self, img: Image.Image, magnitude: Union[int, str, None] = 1,
                      out_format: Optional[str] = "png", quality: Union[int, str, None] = 92) -> SRResult:
        """Upscale a decoded Pillow image and encode it once (used by ``/superres`` and by ``/generate``)."""
        fmt = parse_out_format(out_format)
        q = _parse_quality(quality)
        passes = self._check_magnitude(magnitude)
        pixels = image_to_uint8(img)
        out = self._upscale_planes(pixels, passes).to_pil()
        data = encode_pil(out, fmt, q, self.config.png_compression)
        return SRResult(data, OUT_FORMATS[fmt][1], self.headers(passes, fmt), out.width, out.height)

    def upscale_bytes(self, data: bytes, magnitude: Union[int, str, None] = 1,
                      out_format: Optional[str] = "png", quality: Union[int, str, None] = 92) -> SRResult:
        """Decode an uploaded image (size-checked before decoding), upscale it, encode the result."""
        if self._pool is None:
            raise Unavailable("super-resolution is disabled on this server (SR_ENABLED=0)")
        parse_out_format(out_format)
        _parse_quality(quality)
        passes = self._check_magnitude(magnitude)
        img = open_image(data, passes, self.config.scale, self.config.max_pixels)
        return self.upscale_image(img, passes, out_format, quality)

    def headers(self, passes: int, out_format: str) -> dict:
        """The response headers of the seed server, plus the pass count and format."""
        return {"X-SuperRes": "1", "X-SR-Model": self.model_name,
                "X-SR-Scale": str(self.config.scale ** passes), "X-SR-Passes": str(passes),
                "X-SR-Format": out_format}

    def stats(self) -> dict:
        """State for ``/health``: model, tiling, workers and pool counters."""
        if self._pool is None:
            return {"enabled": False}
        with self._lock:
            workers, tiles = list(self._workers), self._tiles_run
        c = self.config
        return {"enabled": True, "model": self.model_name, "scale": c.scale, "tile": c.input_size,
                "margin": c.tile_margin, "blend": c.tile_blend, "max_pixels": c.max_pixels,
                "request_timeout": c.request_timeout, "tiles_run": tiles, "workers": workers,
                "pool": self._pool.stats()}

    def close(self) -> None:
        """Cancel queued and running jobs and release the runtimes. Idempotent."""
        if self._pool is not None:
            self._pool.close()


def _parse_quality(quality: Union[int, str, None]) -> int:
    try:
        q = int(quality if quality not in (None, "") else 92)
    except (TypeError, ValueError):
        raise BadInput(f"quality must be an integer 1-100, got {quality!r}") from None
    if not 1 <= q <= 100:
        raise BadInput(f"quality must be 1-100, got {q}")
    return q
