"""RKNNLite's API on Rockchip's own PC simulator (rknn-toolkit2), so the service's RKNN code path —
``RknnRuntime``, ``Upscaler``, ``LCMPipeline`` — runs unchanged on real converted models off the board.

The simulator cannot run a ``.rknn`` file (``load_rknn`` then ``init_runtime`` answers -1), so
``load_rknn(path)`` reads the conversion sidecar beside ``path`` and rebuilds the same model from its ONNX
and calibration set, in this process, exactly as ``image-engine convert`` built it. It accepts only the AUTO
core mask: the mask the caller asked for is recorded (``requested_core_mask``) and AUTO is what runs.
Every failure becomes what the board's RKNNLite gives: -1 from ``load_rknn``/``init_runtime``, ``None``
from ``inference``, with the reason logged and kept in ``last_error``.

Selected with ``IMAGE_ENGINE_RKNN_SIM=1`` (subprocesses) or ``load_runtime(..., rknn_lite_cls=...)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import ImageEngineError
from .rknn_sidecar import BuildRecord, SidecarError, file_sha256, read_sidecar, sidecar_path
from .rknn_toolkit import BuildSpec, Built, build, captured_output, last_line

log = logging.getLogger(__name__)

CORE_AUTO = 0


def spec_from_record(record: BuildRecord, rknn_path: Path) -> BuildSpec:
    """The build the sidecar of ``rknn_path`` describes; :class:`SidecarError` if its ONNX changed."""
    side = sidecar_path(rknn_path)
    onnx = record.onnx_path(side)
    if not onnx.is_file():
        raise SidecarError(f"{side} names {onnx}, which does not exist")
    if file_sha256(onnx) != record.onnx_sha256:
        raise SidecarError(f"{onnx} changed since {rknn_path.name} was converted (SHA-256 differs): convert again")
    return BuildSpec(onnx, record.inputs, record.input_shapes, record.target, record.dtype,
                     record.dataset_path(side), record.quantized_algorithm)


@dataclass(frozen=True)
class SimCall:
    """One ``init_runtime`` of the simulator: the model, the mask asked for and the mask that ran."""

    model: str
    requested_core_mask: int
    core_mask: int


class SimulatorRKNNLite:
    """``load_rknn``, ``init_runtime``, ``inference``, ``release`` over rknn-toolkit2's simulator."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7
    runtime_name = "rknn-toolkit2 simulator"

    _log_lock = threading.Lock()
    _inits: list[SimCall] = []

    def __init__(self, verbose: bool = False):
        self._built: Optional[Built] = None
        self._path: Optional[Path] = None
        self.record: Optional[BuildRecord] = None
        self.requested_core_mask: Optional[int] = None
        self.core_mask: Optional[int] = None
        self.last_error: Optional[str] = None
        self._prepared = False

    @classmethod
    def inits(cls) -> list[SimCall]:
        """Every ``init_runtime`` so far in this process (a copy)."""
        with cls._log_lock:
            return list(cls._inits)

    def _fail(self, what: str, reason: str) -> None:
        self.last_error = reason
        log.error("simulator %s failed for %s: %s", what, self._path, reason)

    def load_rknn(self, path: Union[str, Path]) -> int:
        """0 once the model the sidecar describes is rebuilt; -1 (reason logged) otherwise."""
        self._path = Path(path)
        try:
            if not self._path.is_file():
                raise SidecarError(f"{self._path} does not exist")
            self.record = read_sidecar(self._path)
            self._built = build(spec_from_record(self.record, self._path))
        except (ImageEngineError, SidecarError, OSError) as exc:
            self._fail("load_rknn", str(exc))
            return -1
        log.info("simulator rebuilt %s (%s, %s) from %s", self._path.name, self.record.dtype, self.record.target,
                 self.record.source_onnx)
        return 0

    def init_runtime(self, core_mask: int = CORE_AUTO, **_ignored) -> int:
        """0 on success. The simulator runs AUTO only; the mask asked for is recorded, not applied."""
        if self._built is None:
            self._fail("init_runtime", "no model loaded")
            return -1
        self.requested_core_mask = core_mask
        try:
            with captured_output():  # its progress bars go to the debug log, not the service's console
                rc = self._built.rknn.init_runtime(target=None)
        except Exception as exc:  # noqa: BLE001 - the board's runtime answers -1, so does this
            self._fail("init_runtime", last_line(str(exc)))
            return -1
        if rc != 0:
            self._fail("init_runtime", f"rknn init_runtime answered {rc}")
            return -1
        self.core_mask = CORE_AUTO
        with self._log_lock:
            self._inits.append(SimCall(str(self._path), core_mask, CORE_AUTO))
        if core_mask != CORE_AUTO:
            log.info("simulator: %s asked for core mask %d; the simulator runs AUTO", self._path.name, core_mask)
        return 0

    def inference(self, inputs: list, data_format: Union[str, list, None] = None, **_ignored):
        """The outputs, or None (as RKNNLite gives) when the simulator refuses the call."""
        if self._built is None:
            self._fail("inference", "no model loaded")
            return None
        # The first call prints the simulator's graph-preparation bars; capturing redirects the process's
        # stdout/stderr, so later calls (maybe concurrent with other threads' logging) run uncaptured.
        quiet = captured_output() if not self._prepared else contextlib.nullcontext()
        self._prepared = True
        try:
            with quiet:
                outputs = self._built.rknn.inference(inputs=inputs, data_format=data_format)
        except Exception as exc:  # noqa: BLE001 - RKNNLite reports failure as None, not as an exception
            self._fail("inference", last_line(str(exc)))
            return None
        if outputs is None:
            self._fail("inference", "the simulator returned no output")
        return outputs

    def release(self) -> None:
        built, self._built = self._built, None
        if built is not None:
            built.release()


def prebuilt_lite_class(built: Built) -> type:
    """A :class:`SimulatorRKNNLite` whose ``load_rknn`` adopts ``built`` (still in memory, owned by the caller)
    instead of rebuilding it: ``convert`` measures a candidate before deciding to export it."""

    class PrebuiltSimulatorRKNNLite(SimulatorRKNNLite):
        def load_rknn(self, path: Union[str, Path]) -> int:
            self._path, self._built = Path(path), built
            return 0

        def release(self) -> None:
            self._built = None  # the caller releases the build

    return PrebuiltSimulatorRKNNLite
