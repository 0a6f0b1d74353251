"""The ``rkllm`` runtime of the bridge: models on the NPU through librkllmrt.

``RKLLMRuntime(lib_path=None, abi=None)`` finds and identifies the library lazily (on the first
``load`` or ``describe``), never at import or construction. Each ``load`` creates an independent
:class:`~.handle.RKLLMHandle` with its own callback, so several instances of one model can coexist
(RKLLM >= 1.2.2 supports multiple handles).
"""

from __future__ import annotations

import logging
import threading

from ..runtimes.base import SAMPLING_FIELDS, ModelLoadError, ModelSpec, Runtime, RuntimeUnavailable
from .handle import RKLLMHandle
from .library import RKLLMLibrary
from .model_file import inspect_model, version_mismatch

log = logging.getLogger(__name__)

MAX_IMAGES = 16  # images per prompt the bridge hands to one multimodal input (the settings cap it lower)

class RKLLMRuntime(Runtime):
    """librkllmrt-backed runtime. ``lib_path``/``abi`` override ``RKLLM_LIB``/``RKLLM_ABI``; a run with no
    output for ``stall_timeout_s`` ends with an error."""

    name = "rkllm"

    def __init__(self, lib_path: str | None = None, abi: str | None = None, stall_timeout_s: float = 240.0):
        self._lib_path = lib_path
        self._abi = abi
        self._stall_timeout_s = stall_timeout_s
        self._library: RKLLMLibrary | None = None
        self._lock = threading.Lock()

    @property
    def library(self) -> RKLLMLibrary:
        """The identified library (RuntimeUnavailable with a clear message if there is none usable)."""
        with self._lock:
            if self._library is None:
                self._library = RKLLMLibrary(self._lib_path, self._abi)
            return self._library

    @property
    def label(self) -> str:  # type: ignore[override]
        try:
            lib = self.library
        except RuntimeUnavailable as exc:
            return f"rkllm (unavailable: {exc})"
        stub = ", test stub" if lib.is_stub else ""
        return f"rkllm {lib.version or '?'} (ABI {lib.abi.name}{stub})"

    def describe(self) -> dict:
        out = {"name": self.name, "label": self.label}
        try:
            out["library"] = self.library.describe()
        except RuntimeUnavailable as exc:
            out["error"] = str(exc)
        return out

    def per_request_params(self) -> frozenset:
        """RKLLM 1.3 takes sampling settings per run (``RKLLMInferParam``); 1.1 and 1.2 only at
        ``rkllm_init``, from the Modelfile. No release takes a seed."""
        try:
            abi = self.library.abi
        except RuntimeUnavailable:
            return frozenset()
        return SAMPLING_FIELDS - {"seed"} if abi.has_run_overrides else frozenset()

    def max_images(self) -> int:
        """RKLLM takes images through its multimodal input: one per prompt before 1.2.1, several after."""
        try:
            abi = self.library.abi
        except RuntimeUnavailable:
            return 0
        return MAX_IMAGES if abi.has_n_image else 1

    def no_images_reason(self) -> str:
        return "the rkllm runtime cannot be used here (no library), so it takes no image"

    def load(self, spec: ModelSpec) -> RKLLMHandle:
        library = self.library
        library.load()  # load and check the library before touching the model
        if spec.weights is None:
            raise ModelLoadError(f"{spec.name}: the Modelfile has no FROM naming the .rkllm file")
        hints = [spec.options.get("HUGGINGFACE_PATH", ""), spec.directory.name]
        info = inspect_model(spec.weights, hints)
        if info.problem:
            raise ModelLoadError(f"{spec.name}: {info.path}: {info.problem}")
        mismatch = version_mismatch(info.toolkit_version, library.version)
        if mismatch and info.version_source == "header":
            raise ModelLoadError(f"{spec.name}: {mismatch}; convert it again with rkllm-toolkit "
                                 f"{'.'.join(library.version.split('.')[:2])}.x or install a matching runtime")
        if mismatch:
            log.warning("%s: %s (going by the file name; loading anyway)", spec.name, mismatch)
        handle = RKLLMHandle(library, spec, stall_timeout_s=self._stall_timeout_s)
        log.info("%s: loaded %s on RKLLM %s (ABI %s)", spec.name, info.path, library.version or "?", library.abi.name)
        return handle
