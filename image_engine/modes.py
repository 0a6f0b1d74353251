"""Generation modes: ``modes.yaml`` (a model directory plus default size/steps/guidance/SR per mode).

The file is re-read when it changes (polled), on SIGHUP and on request. A file that does not parse or
names a missing model directory leaves the previous configuration in force; the reason is kept in
``ModeManager.last_error`` and logged. Without a file, one mode named ``default`` is made from
``MODEL_ROOT`` and the ``DEFAULT_*`` settings (the legacy environment configuration).

Example::

    model_root: /models
    default_mode: lcm-384
    modes:
      lcm-384:
        model: lcm-dreamshaper-rknn-384     # relative to model_root
        default_size: "384x384"
        default_steps: 4
        default_guidance: 1.0
        superres: false
        superres_magnitude: 1
      lcm-384-watercolor:                   # a LoRA merged by `image-engine merge-lora`
        model: lcm-dreamshaper-watercolor
        loras: ["watercolor.safetensors:0.8"]
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .pipeline import model_image_size

log = logging.getLogger(__name__)

_MODE_KEYS = {"model", "default_size", "default_steps", "default_guidance", "superres", "superres_magnitude",
              "superres_format", "superres_quality", "backend", "loras", "description"}


class ModesError(ValueError):
    """A modes file is malformed; the message says where."""


FALLBACK_SIZE = (512, 512)  # SD 1.5's size, for a model whose config names none


def default_size_for(model: Path, defaults: ModeDefaults) -> tuple[int, int]:
    """A mode's size when it declares none: ``DEFAULT_SIZE`` if set, else the model's, else 512x512."""
    return defaults.size or model_image_size(model) or FALLBACK_SIZE


@dataclass(frozen=True)
class ModeDefaults:
    """Values a mode falls back to (the ``DEFAULT_*`` settings). ``size`` None: the model's own size (its
    ``unet/config.json``), else ``FALLBACK_SIZE``."""

    size: tuple[int, int] | None = None
    steps: int = 4
    guidance: float = 1.0


@dataclass(frozen=True)
class Mode:
    """One named configuration: which model, and the request defaults it implies."""

    name: str
    model: Path
    size: tuple[int, int]
    steps: int
    guidance: float
    superres: bool = False
    superres_magnitude: int = 1
    superres_format: str = "png"
    superres_quality: int = 92
    backend: str = "auto"
    description: str = ""
    loras: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "model": str(self.model), "default_size": f"{self.size[0]}x{self.size[1]}",
                "default_steps": self.steps, "default_guidance": self.guidance, "superres": self.superres,
                "superres_magnitude": self.superres_magnitude, "superres_format": self.superres_format,
                "superres_quality": self.superres_quality, "backend": self.backend,
                "description": self.description, "loras": list(self.loras)}


@dataclass(frozen=True)
class ModesConfig:
    """An immutable snapshot of all modes; a reload swaps the whole snapshot."""

    modes: dict[str, Mode]
    default_mode: str
    source: Path | None = None
    digest: str = ""
    loaded_at: float = field(default_factory=time.time)


def parse_size(text: object) -> tuple[int, int]:
    """``"WxH"`` → (width, height); raises ValueError with the reason."""
    if not isinstance(text, str):
        raise ValueError(f"size must be a string like '512x512', got {type(text).__name__}")
    parts = text.lower().strip().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} is not of the form WIDTHxHEIGHT (e.g. '512x512')")
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return w, h


def parse_modes(text: str, base_dir: Path, defaults: ModeDefaults, source: Path | None = None,
                check_models: bool = True) -> ModesConfig:
    """Parse a modes YAML document; relative model paths resolve against ``model_root`` or ``base_dir``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModesError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("modes"), dict) or not doc["modes"]:
        raise ModesError("expected a mapping with a non-empty 'modes' mapping")
    root = Path(str(doc.get("model_root") or base_dir)).expanduser()
    if not root.is_absolute():
        root = base_dir / root
    modes = {str(name): _parse_mode(str(name), spec, root, defaults, check_models)
             for name, spec in doc["modes"].items()}
    default = str(doc.get("default_mode") or next(iter(modes)))
    if default not in modes:
        raise ModesError(f"default_mode {default!r} is not one of the modes {sorted(modes)}")
    return ModesConfig(modes, default, source, hashlib.sha256(text.encode()).hexdigest()[:16])


def _parse_mode(name: str, spec: object, root: Path, defaults: ModeDefaults, check_models: bool) -> Mode:
    where = f"mode {name!r}"
    if not isinstance(spec, dict) or not spec.get("model"):
        raise ModesError(f"{where}: expected a mapping with a 'model' directory")
    unknown = set(spec) - _MODE_KEYS
    if unknown:
        raise ModesError(f"{where}: unknown keys {sorted(unknown)}")
    model = Path(str(spec["model"])).expanduser()
    model = model if model.is_absolute() else root / model
    if check_models and not (model / "unet").is_dir():
        raise ModesError(f"{where}: model directory {model} does not exist or has no unet/")
    loras = _mode_loras(where, spec.get("loras"), model, check_models)
    try:
        size = parse_size(spec["default_size"]) if "default_size" in spec else default_size_for(model, defaults)
        steps = _typed(spec, "default_steps", int, defaults.steps)
        guidance = float(_typed(spec, "default_guidance", (int, float), defaults.guidance))
        magnitude = _typed(spec, "superres_magnitude", int, 1)
        quality = _typed(spec, "superres_quality", int, 92)
    except ValueError as exc:
        raise ModesError(f"{where}: {exc}") from None
    if not 1 <= magnitude <= 3:
        raise ModesError(f"{where}: superres_magnitude must be 1-3, got {magnitude}")
    fmt = str(spec.get("superres_format", "png")).lower()
    if fmt not in ("png", "jpeg", "webp"):
        raise ModesError(f"{where}: superres_format must be png, jpeg or webp, got {fmt!r}")
    backend = str(spec.get("backend", "auto"))
    if backend not in ("auto", "onnxruntime", "rknnlite"):
        raise ModesError(f"{where}: backend must be auto, onnxruntime or rknnlite, got {backend!r}")
    return Mode(name, model, size, steps, guidance, bool(spec.get("superres", False)), magnitude, fmt, quality,
                backend, str(spec.get("description", "")), loras)


def _mode_loras(where: str, entries: object, model: Path, check_models: bool) -> tuple[dict, ...]:
    """A mode's ``loras``: each must already be merged into its model directory (RKNN graphs are fixed)."""
    from .lora_merge import LoraSpec, merged_loras

    if not entries:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ModesError(f"{where}: loras must be a list of 'FILE' or 'FILE:SCALE' strings")
    wanted = [LoraSpec.parse(e) for e in entries]
    merged = merged_loras(model) if check_models else []
    found = []
    for spec in wanted:
        hit = next((m for m in merged if Path(str(m.get("file", ""))).name == spec.path.name
                    and abs(float(m.get("scale", 1.0)) - spec.scale) < 1e-9), None)
        if hit is None and check_models:
            raise ModesError(
                f"{where}: LoRA {spec.path.name} (scale {spec.scale:g}) is not merged into {model}: the NPU "
                f"graphs are fixed, so merge it first — image-engine merge-lora BASE_MODEL_DIR --lora "
                f"{spec.path}:{spec.scale:g} --out NEW_DIR (then convert NEW_DIR for RKNN) — and name NEW_DIR "
                "as this mode's model")
        found.append({"file": spec.path.name, "scale": spec.scale, "sha256": (hit or {}).get("sha256")})
    return tuple(found)


def _typed(spec: dict, key: str, kind, default):
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return value


def legacy_modes(model_root: Path, defaults: ModeDefaults, backend: str = "auto") -> ModesConfig:
    """One mode, ``default``, serving ``MODEL_ROOT`` (the seed servers' environment configuration)."""
    mode = Mode("default", Path(model_root), default_size_for(Path(model_root), defaults), defaults.steps,
                defaults.guidance, backend=backend)
    return ModesConfig({"default": mode}, "default")


class ModeManager:
    """The current modes snapshot, the active mode, and reloading.

    Readers take ``snapshot()`` once per request and use it throughout, so a reload never changes a
    request half-way; in-flight jobs keep the mode object they started with.
    """

    def __init__(self, config: ModesConfig, defaults: ModeDefaults,
                 on_reload: Callable[[ModesConfig], None] | None = None):
        self._lock = threading.Lock()
        self._config = config
        self._current = config.default_mode
        self._defaults = defaults
        self._on_reload = on_reload
        self._stamp = self._file_stamp()
        self.last_error: str | None = None
        self.reloads = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_file(cls, path: Path, defaults: ModeDefaults) -> ModeManager:
        """Load ``path`` (errors raise :class:`ModesError`: a server must not start on a bad file)."""
        path = Path(path)
        text = path.read_text()
        return cls(parse_modes(text, path.parent, defaults, source=path), defaults)

    def snapshot(self) -> tuple[ModesConfig, str]:
        """(all modes, name of the current mode)."""
        with self._lock:
            return self._config, self._current

    def mode(self, name: str | None = None) -> Mode:
        """The named mode, or the current one; KeyError names the known modes."""
        config, current = self.snapshot()
        key = current if name is None else name
        if key not in config.modes:
            raise KeyError(f"unknown mode {key!r}; known modes: {sorted(config.modes)}")
        return config.modes[key]

    def switch(self, name: str) -> tuple[str, str]:
        """Make ``name`` the current mode; returns (previous, new). KeyError if unknown."""
        with self._lock:
            if name not in self._config.modes:
                raise KeyError(f"unknown mode {name!r}; known modes: {sorted(self._config.modes)}")
            previous, self._current = self._current, name
        if previous != name:
            log.info("mode switched from %s to %s (jobs already queued keep their mode)", previous, name)
        return previous, name

    def reload(self) -> tuple[bool, str | None]:
        """Re-read the file; on error keep the old modes. Returns (changed, error message or None)."""
        source = self._config.source
        if source is None:
            return False, None
        try:
            text = source.read_text()
            fresh = parse_modes(text, source.parent, self._defaults, source=source)
        except (OSError, ModesError) as exc:
            self.last_error = f"{source}: {exc}"
            log.error("modes reload failed, keeping the previous modes: %s", self.last_error)
            return False, self.last_error
        with self._lock:
            changed = fresh.digest != self._config.digest
            self._config = fresh
            if self._current not in fresh.modes:
                log.warning("current mode %s is gone after reload; using %s", self._current, fresh.default_mode)
                self._current = fresh.default_mode
            self.last_error = None
            self.reloads += 1
        if changed:
            log.info("modes reloaded from %s: %s (default %s)", source, sorted(fresh.modes), fresh.default_mode)
            if self._on_reload is not None:
                self._on_reload(fresh)
        return changed, None

    def _file_stamp(self) -> tuple[int, int] | None:
        source = self._config.source
        try:
            st = source.stat() if source is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    def start_watching(self, interval: float = 1.0) -> None:
        """Poll the file's mtime and size every ``interval`` seconds and reload on change."""
        if self._config.source is None or self._watcher is not None:
            return

        def watch() -> None:
            while not self._stop.wait(interval):
                stamp = self._file_stamp()
                if stamp is not None and stamp != self._stamp:
                    self._stamp = stamp
                    self.reload()

        self._watcher = threading.Thread(target=watch, name="modes-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
