"""The text-to-image service: modes, a pool of LCM workers, and the optional super-resolution step.

variable               default       meaning
=====================  ============  ==========================================================
MODES_PATH             ./modes.yaml  modes file (used when it exists); reloaded on change
MODEL_ROOT             (none)        legacy: one LCM model directory, served as mode "default"
NUM_WORKERS            1             generation workers, one set of runtimes each (RKNN: core i%3)
QUEUE_MAX              64            queued generations beyond the running ones; more → 429
DEFAULT_SIZE           (the model)   size when neither the request nor the mode gives one; unset: the
                                     model's unet/config.json sample_size, else 512x512
DEFAULT_STEPS          4             steps likewise
DEFAULT_GUIDANCE       1.0           guidance scale likewise
DEFAULT_TIMEOUT        120           seconds from queueing to result; the job is then cancelled
LCM_BACKEND (new)      auto          auto | onnxruntime | rknnlite
OUTPUTS_DIR (new)      ./outputs     where ``/inference`` saves its images
MODES_WATCH_INTERVAL   1.0           seconds between modes-file checks; 0 disables polling (new)
=====================  ============  ==========================================================
=======
Its settings are :class:`~image_engine.config.GenConfig` (modes file, model root, workers, queue, defaults).
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager

import numpy as np

from .config import ConfigError, GenConfig
from .errors import BadInput, Cancelled, RuntimeFailure, Unavailable
from .gen_request import GenerateRequest
from .modes import Mode, ModeManager, ModesError, legacy_modes
from .pipeline import GenerateParams, Generation, LCMPipeline, StepEvent
from .workers import CancelToken, WorkerPool

log = logging.getLogger(__name__)

_NPU_MEMORY_FILES = ("/sys/kernel/debug/rknpu/mm", "/proc/rknpu/mm")
_NPU_LOAD_FILES = ("/sys/kernel/debug/rknpu/load", "/proc/rknpu/load")


@dataclass
class GenResult:
    """A finished request: the (possibly upscaled) float image and what produced it."""

    image: np.ndarray
    mode: Mode
    generation: Generation
    sr_passes: int = 0
    sr_headers: dict[str, str] = field(default_factory=dict)
    out_format: str = "png"
    quality: int = 92


class LCMWorker:
    """One worker thread's pipeline; it reloads only when a job asks for a different model."""

    def __init__(self, index: int, backend: str, npu_gate: Callable[[], ContextManager] | None = None):
        self.index = index
        self.backend = backend
        self.npu_gate = npu_gate
        self.pipeline: LCMPipeline | None = None
        self.key: tuple | None = None
        self.mode_name = ""

    def _loader(self):
        if self.npu_gate is None:
            return None  # the pipeline's default loader
        from .runtimes import load_runtime

        return lambda path, be, core: load_runtime(path, be, core_index=core, gate=self.npu_gate)

    def pipeline_for(self, mode: Mode) -> LCMPipeline:
        backend = mode.backend if mode.backend != "auto" else self.backend
        key = (str(mode.model), backend, mode.size)
        if self.pipeline is None or key != self.key:
            self.close()
            try:
                self.pipeline = LCMPipeline.load(mode.model, backend, self.index, fixed_size=mode.size,
                                                 loader=self._loader())
            except (FileNotFoundError, ValueError) as exc:
                raise RuntimeFailure(f"cannot load mode {mode.name!r}: {exc}") from exc
            self.key = key
        self.mode_name = mode.name
        return self.pipeline

    def describe(self) -> dict:
        p = self.pipeline
        if p is None:
            return {"index": self.index, "loaded": False}
        return {"index": self.index, "loaded": True, "mode": self.mode_name, "model": str(p.files.root),
                "backend": p.runtimes["unet"].backend if p.runtimes else None,
                "sizes": [f"{w}x{h}" for w, h in (p.sizes() or [])] or "any multiple of 8",
                "weights_bytes": sum(f.stat().st_size for f in p.files.paths.values() if f.exists())}

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline, self.key = None, None


class GenerateService:
    """Owns the modes and the LCM worker pool; safe to call from many request threads.

    ``sr`` is the super-resolution service used when a request (or its mode) asks for ``superres``.
    Construction loads the default mode on every worker and raises if it cannot (fail fast).
    """

    def __init__(self, config: GenConfig, sr=None):
        self.config = config
        self.sr = sr
        self._lock = threading.Lock()
        self._workers: list[LCMWorker] = []
        self._counters = {"generated": 0, "steps": 0, "cancelled": 0}
        self.modes: ModeManager | None = None
        self._pool: WorkerPool | None = None
        if not config.configured:
            log.info("text-to-image disabled: set MODES_PATH (modes.yaml) or MODEL_ROOT")
            return
        if config.modes_file is not None:
            try:
                self.modes = ModeManager.from_file(config.modes_file, config.defaults)
            except (OSError, ModesError) as exc:
                raise ConfigError(f"modes file {config.modes_file}: {exc}") from None
        else:
            self.modes = ModeManager(legacy_modes(config.model_root, config.defaults, config.backend),
                                     config.defaults)
        self._pool = WorkerPool(config.num_workers, self._make_worker, config.queue_max,
                                close_state=LCMWorker.close, name="lcm-worker")
        if config.watch_interval > 0:
            self.modes.start_watching(config.watch_interval)
        self._install_sighup()

    def _make_worker(self, index: int) -> LCMWorker:
        worker = LCMWorker(index, self.config.backend, self.config.npu_gate)
        worker.pipeline_for(self.modes.mode())
        with self._lock:
            self._workers.append(worker)
        log.info("LCM worker %d ready: %s", index, worker.describe())
        return worker

    def _install_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            return

        def on_hup(_signum, _frame) -> None:
            log.info("SIGHUP: reloading modes")
            threading.Thread(target=self.modes.reload, name="modes-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, on_hup)

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    def _require(self) -> ModeManager:
        if self._pool is None or self.modes is None:
            raise Unavailable("text-to-image is not configured on this server (set MODES_PATH or MODEL_ROOT)")
        return self.modes

    def resolve(self, req: GenerateRequest) -> tuple[Mode, GenerateParams]:
        """Fill a request from its mode's defaults. A named mode becomes the current one (seed behaviour)."""
        modes = self._require()
        if req.mode is not None:
            try:
                modes.switch(req.mode)
            except KeyError as exc:
                raise BadInput(str(exc.args[0])) from None
        mode = modes.mode()
        w, h = req.size or mode.size
        seed = req.seed if req.seed is not None else secrets.randbelow(2 ** 32)
        params = GenerateParams(req.prompt, w, h, req.steps or mode.steps,
                                req.guidance if req.guidance is not None else mode.guidance, seed)
        return mode, params

    def generate(self, req: GenerateRequest, on_step: Callable[[StepEvent], None] | None = None,
                 on_start: Callable[[Mode, GenerateParams], None] | None = None,
                 cancel: threading.Event | None = None) -> GenResult:
        """Generate (queued; DEFAULT_TIMEOUT cancels it), then upscale if asked. ``cancel`` stops it early."""
        mode, params = self.resolve(req)
        log.info("generate: mode=%s %dx%d steps=%d guidance=%g seed=%d prompt=%r", mode.name, params.width,
                 params.height, params.steps, params.guidance, params.seed, params.prompt[:80])

        def job(worker: LCMWorker, token: CancelToken) -> Generation:
            pipe = worker.pipeline_for(mode)
            pipe.check_size(params.width, params.height)
            if on_start is not None:
                on_start(mode, params)

            def step(event: StepEvent) -> None:
                self._count("steps")
                if cancel is not None and cancel.is_set():
                    token.cancel("the client went away")
                if on_step is not None:
                    on_step(event)

            return pipe.generate(params, step, token)

        try:
            generation = self._pool.submit(job, timeout=self.config.default_timeout)
        except Cancelled:
            self._count("cancelled")
            raise
        self._count("generated")
        log.info("generated %dx%d seed=%d in %.2fs (models %.2fs)", params.width, params.height, params.seed,
                 generation.seconds, sum(generation.model_seconds.values()))
        return self._post_process(req, mode, generation)

    def _post_process(self, req: GenerateRequest, mode: Mode, generation: Generation) -> GenResult:
        want_sr = req.superres if req.superres is not None else mode.superres
        fmt = req.superres_format or mode.superres_format
        quality = req.superres_quality or mode.superres_quality
        result = GenResult(generation.image, mode, generation)
        if not want_sr:
            return result
        if self.sr is None or not getattr(self.sr, "enabled", False):
            log.warning("superres requested but super-resolution is disabled; returning the base image")
            result.sr_headers = {"X-SR-Skipped": "super-resolution disabled on this server"}
            return result
        passes = req.superres_magnitude or mode.superres_magnitude
        started = time.perf_counter()
        result.image = self.sr.upscale_array(generation.image, passes)
        log.info("superres x%d pass(es) in %.2fs", passes, time.perf_counter() - started)
        result.sr_passes, result.out_format, result.quality = passes, fmt, quality
        result.sr_headers = self.sr.headers(passes, fmt)
        return result

    def encode(self, result: GenResult) -> tuple[bytes, str, dict[str, str]]:
        """(bytes, mimetype, headers) of a result: PNG, or the SR format when upscaled."""
        from .sr_io import OUT_FORMATS, encode

        fmt = result.out_format
        png_level = getattr(getattr(self.sr, "config", None), "png_compression", 1)
        data = encode(result.image, fmt, result.quality, png_level)
        p = result.generation.params
        headers = {"X-Seed": str(p.seed), "X-Mode": result.mode.name, "X-SuperRes": "1" if result.sr_passes else "0",
                   "X-Steps": str(p.steps), "X-Size": f"{p.width}x{p.height}",
                   "X-Generation-Seconds": f"{result.generation.seconds:.3f}", **result.sr_headers}
        return data, OUT_FORMATS[fmt][1], headers

    def save_output(self, data: bytes, uid: str, seed: int) -> tuple[str, Path]:
        """Persist an image under OUTPUTS_DIR as ``<uid>-<seed>.png``; returns (uid, path).

        The uid is the client's (any string; only letters, digits, '-' and '_' reach the file name) or a
        fresh random one.
        """
        uid = uid or uuid.uuid4().hex[:8]
        out_dir = self.config.outputs_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", uid)[:64]
        path = out_dir / f"{safe}-{seed}.png"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return uid, path

    def switch(self, name: str) -> dict:
        """Make ``name`` current; jobs already queued keep their mode, later ones use the new one."""
        modes = self._require()
        try:
            previous, current = modes.switch(name)
        except KeyError as exc:
            raise BadInput(str(exc.args[0])) from None
        return {"status": "switched" if previous != current else "unchanged", "previous": previous,
                "mode": current, "queued_jobs_keep_their_mode": True}

    def reload(self) -> dict:
        """Re-read the modes file; a bad file keeps the previous modes and the reason is returned."""
        modes = self._require()
        changed, error = modes.reload()
        if error is not None:
            raise ModesError(error)
        config, current = modes.snapshot()
        return {"status": "reloaded" if changed else "unchanged", "modes": sorted(config.modes),
                "current_mode": current, "source": str(config.source) if config.source else None}

    def list_modes(self) -> dict:
        modes = self._require()
        config, current = modes.snapshot()
        return {"current_mode": current, "default_mode": config.default_mode,
                "source": str(config.source) if config.source else None,
                "modes": {name: m.to_json() for name, m in config.modes.items()},
                "last_reload_error": modes.last_error}

    def status(self) -> dict:
        """Current mode, queue and worker state, counters and memory."""
        modes = self._require()
        config, current = modes.snapshot()
        with self._lock:
            workers = [w.describe() for w in self._workers]
            counters = dict(self._counters)
        return {"current_mode": current, "default_mode": config.default_mode, "modes": sorted(config.modes),
                "reloads": modes.reloads, "last_reload_error": modes.last_error, "queue": self._pool.stats(),
                "workers": workers, "counters": counters, "memory": memory_stats()}

    def stats(self) -> dict:
        """The short form for ``/health``."""
        if self._pool is None:
            return {"enabled": False}
        _, current = self.modes.snapshot()
        with self._lock:
            counters = dict(self._counters)
        return {"enabled": True, "current_mode": current, "pool": self._pool.stats(), **counters}

    def vram(self) -> dict:
        """Memory: this process, the NPU (where the kernel exposes it) and the loaded model files."""
        with self._lock:
            workers = [w.describe() for w in self._workers]
        return {**memory_stats(), "models": workers}

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def close(self) -> None:
        """Stop watching the modes file and cancel queued and running jobs. Idempotent."""
        if self.modes is not None:
            self.modes.close()
        if self._pool is not None:
            self._pool.close()


def memory_stats() -> dict:
    """Process RSS and peak from /proc, and the RKNPU driver's memory and load files when readable."""
    process: dict[str, int | None] = {"rss_bytes": None, "peak_rss_bytes": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                process["rss_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                process["peak_rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    npu: dict[str, object] = {"readable": False}
    for key, candidates in (("memory", _NPU_MEMORY_FILES), ("load", _NPU_LOAD_FILES)):
        for path in candidates:
            try:
                npu[key] = Path(path).read_text().strip()
                npu[f"{key}_source"] = path
                npu["readable"] = True
                break
            except OSError:
                continue
    return {"process": process, "npu": npu}
