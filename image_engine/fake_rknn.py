"""A stand-in for ``rknnlite.api.RKNNLite`` that runs the matching ONNX model through onnxruntime.

It is kept only for what Rockchip's PC simulator cannot do: pinning a context to one NPU core (the simulator
accepts only the AUTO mask) and several cores working at once (one worker per core). Everything else about the
RKNN path — fixed shapes, NHWC inputs, ``None`` on failure, fp16/int8 numerics — is tested on the real
toolkit's simulator (``image_engine/rknn_sim.py``, tests/rknn_sim), because this fake hides it: it runs the
dynamic-shape ONNX, so it accepts any tile size and any layout the ONNX accepts. For ``model.rknn`` it loads
the sibling ``model.onnx``. Every inference is recorded in a class-level, thread-safe log so tests can see
which core ran what, and when.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np


@dataclass(frozen=True)
class FakeCall:
    """One recorded ``inference`` call: the model path given to ``load_rknn``, the core mask, monotonic times."""

    model: str
    core_mask: int
    start: float
    end: float
    thread: str


class FakeRKNNLite:
    """RKNNLite's API (``load_rknn``, ``init_runtime``, ``inference``, ``release``) over onnxruntime."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7
    runtime_name = "fake RKNNLite (onnxruntime)"

    _log_lock = threading.Lock()
    _calls: list[FakeCall] = []

    def __init__(self, verbose: bool = False):
        self._onnx_path: Optional[Path] = None
        self._model_path: Optional[Path] = None
        self._session = None
        self.core_mask: Optional[int] = None

    @classmethod
    def calls(cls) -> list[FakeCall]:
        """A copy of the call log."""
        with cls._log_lock:
            return list(cls._calls)

    @classmethod
    def clear_calls(cls) -> None:
        with cls._log_lock:
            cls._calls.clear()

    def load_rknn(self, path: Union[str, Path]) -> int:
        """0 on success, -1 if neither ``path`` (when ONNX) nor its sibling ``.onnx`` exists."""
        p = Path(path)
        onnx_path = p if p.suffix.lower() == ".onnx" else p.with_suffix(".onnx")
        if not p.exists() or not onnx_path.exists():
            return -1
        self._onnx_path, self._model_path = onnx_path, p
        return 0

    def init_runtime(self, core_mask: int = 0, **_ignored) -> int:
        """0 on success; -1 if no model is loaded or the core mask is not one RKNNLite accepts."""
        if self._onnx_path is None or core_mask not in (0, 1, 2, 4, 3, 7):
            return -1
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self._onnx_path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self.core_mask = core_mask
        return 0

    def inference(self, inputs: list, data_format: Union[str, list, None] = None, **_ignored):
        """Outputs as a list of NCHW arrays, or None (as RKNNLite does) when the call cannot run."""
        if self._session is None:
            return None
        formats = data_format if isinstance(data_format, (list, tuple)) else [data_format] * len(inputs)
        metas = self._session.get_inputs()
        if len(inputs) != len(metas):
            return None
        feeds = {}
        for meta, arr, fmt in zip(metas, inputs, formats, strict=True):
            arr = np.asarray(arr)
            if arr.ndim == 4 and (fmt or "nhwc").lower() == "nhwc":
                arr = arr.transpose(0, 3, 1, 2)
            feeds[meta.name] = np.ascontiguousarray(arr)
        start = time.monotonic()
        try:
            outputs = self._session.run(None, feeds)
        except Exception:  # noqa: BLE001 - RKNNLite reports failure as None, not as an exception
            return None
        end = time.monotonic()
        with self._log_lock:
            self._calls.append(FakeCall(str(self._model_path), int(self.core_mask), start, end,
                                        threading.current_thread().name))
        return list(outputs)

    def release(self) -> None:
        self._session = None
        self._onnx_path = None
