"""One interface over the two model runtimes: onnxruntime (host CPU) and RKNNLite (Rockchip NPU).

Callers always pass and receive NCHW arrays. The RKNNLite backend transposes 4-D inputs to NHWC at the
boundary and turns RKNN's silent ``None`` results into :class:`RuntimeFailure`. RKNNLite is imported only
when an ``.rknn`` model is loaded, never at import time.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Union

import numpy as np

from .errors import RuntimeFailure

log = logging.getLogger(__name__)

# RKNNLite core masks (rknnlite.api.RKNNLite.NPU_CORE_*).
CORE_AUTO, CORE_0, CORE_1, CORE_2, CORE_0_1, CORE_0_1_2 = 0, 1, 2, 4, 3, 7
_CORE_BY_INDEX = (CORE_0, CORE_1, CORE_2)
FAKE_RKNN_ENV = "IMAGE_ENGINE_FAKE_RKNN"
SIM_RKNN_ENV = "IMAGE_ENGINE_RKNN_SIM"  # rknn-toolkit2's PC simulator (image_engine/rknn_sim.py)
BACKENDS = ("onnxruntime", "rknnlite")


def core_mask_for(core_index: Optional[int]) -> int:
    """The RKNN core mask for worker ``core_index`` (cores 0, 1, 2 in turn); None means AUTO."""
    return CORE_AUTO if core_index is None else _CORE_BY_INDEX[core_index % 3]


class ModelRuntime(abc.ABC):
    """A loaded model. Not thread-safe: use one instance per thread."""

    path: Path
    backend: str
    input_names: list[str]
    output_names: list[str]

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on NCHW ``feeds`` (name → array) and return the outputs in model order, NCHW."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model; calling it again does nothing."""

    def input_dtype(self, name: str) -> Optional[np.dtype]:
        """The element type the model declares for input ``name``, when the backend can tell (RKNNLite
        converts inputs to the model's own type and does not say)."""
        return None

    def describe(self) -> dict:
        """A JSON-friendly summary for health and status endpoints."""
        return {"path": str(self.path), "backend": self.backend, "inputs": list(self.input_names),
                "outputs": list(self.output_names)}

    def __enter__(self) -> "ModelRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntime(ModelRuntime):
    """onnxruntime on the CPU; ``threads`` sets the intra-op thread count (None: onnxruntime's default)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = path
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise RuntimeFailure(f"cannot load ONNX model {path}: {exc}") from exc
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.input_shapes = [list(i.shape) for i in self._session.get_inputs()]
        self._input_types = {i.name: _ORT_TYPES.get(i.type) for i in self._session.get_inputs()}

    def input_dtype(self, name: str) -> Optional[np.dtype]:
        kind = self._input_types.get(name)
        return np.dtype(kind) if kind is not None else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            raise RuntimeFailure(f"model {self.path.name} is closed")
        try:
            return list(self._session.run(None, feeds))
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime failed on {self.path.name}: {exc}") from exc

    def close(self) -> None:
        self._session = None


def onnx_io_names(path: Path) -> tuple[list[str], list[str]]:
    """Input/output names of an ONNX file (graph only, no weights), or empty lists if unreadable."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - names are a convenience; RKNN models work positionally
        return [], []
    initialisers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initialisers], [o.name for o in graph.output]


class RknnRuntime(ModelRuntime):
    """RKNNLite on one NPU core mask.

    RKNN models do not carry usable tensor names; they come from a sibling ``.onnx`` when there is one
    (read without weights). Otherwise feeds are taken in the order the caller's dict lists them.
    """

    backend = "rknnlite"

    def __init__(self, path: Path, rknn_lite_cls: Any, core_mask: int = CORE_AUTO):
        self.path = path
        self.core_mask = core_mask
        self._lock = threading.Lock()
        sibling = path.with_suffix(".onnx")
        self.input_names, self.output_names = onnx_io_names(sibling) if sibling.exists() else ([], [])
        self._rknn = rknn_lite_cls()
        if self._rknn.load_rknn(str(path)) != 0:
            raise RuntimeFailure(f"RKNNLite.load_rknn failed for {path}{self._reason()}")
        if self._rknn.init_runtime(core_mask=core_mask) != 0:
            reason = self._reason()
            self._rknn.release()
            raise RuntimeFailure(f"RKNNLite.init_runtime(core_mask={core_mask}) failed for {path}{reason}")

    def _reason(self) -> str:
        """The runtime's own reason when it keeps one (the simulator adapter does; RKNNLite only logs it)."""
        reason = getattr(self._rknn, "last_error", None)
        return f": {reason}" if reason else ""

    def _ordered(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.input_names and set(feeds) == set(self.input_names):
            return [feeds[name] for name in self.input_names]
        if self.input_names and len(feeds) != len(self.input_names):
            raise RuntimeFailure(f"model {self.path.name} takes inputs {self.input_names}, got {list(feeds)}")
        return list(feeds.values())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._rknn is None:
            raise RuntimeFailure(f"model {self.path.name} is closed")
        inputs = [np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a
                  for a in self._ordered(feeds)]
        outputs = self._rknn.inference(inputs=inputs, data_format="nhwc")
        if outputs is None or any(o is None for o in outputs):
            reason = self._reason() or "; see the RKNN runtime log for the cause"
            raise RuntimeFailure(f"RKNN inference returned no output for {self.path.name} "
                                 f"(core mask {self.core_mask}){reason}")
        return [np.asarray(o) for o in outputs]

    def describe(self) -> dict:
        return {**super().describe(), "runtime": getattr(self._rknn, "runtime_name", "RKNNLite")}

    def close(self) -> None:
        with self._lock:
            rknn, self._rknn = self._rknn, None
        if rknn is not None:
            rknn.release()


def _rknn_lite_class() -> Any:
    if os.environ.get(SIM_RKNN_ENV, "") not in ("", "0"):
        from .rknn_sim import SimulatorRKNNLite

        return SimulatorRKNNLite
    if os.environ.get(FAKE_RKNN_ENV, "") not in ("", "0"):
        from .fake_rknn import FakeRKNNLite

        return FakeRKNNLite
    try:
        from rknnlite.api import RKNNLite
    except ImportError as exc:
        raise RuntimeFailure("an .rknn model needs RKNNLite: install rknn-toolkit-lite2 (aarch64 boards, "
                             "`pip install exo-rk[device]`) or use an .onnx model") from exc
    return RKNNLite


class GatedRuntime(ModelRuntime):
    """A runtime whose every call first takes its turn on the NPU: ``gate()`` is a context manager (the
    bridge's arbiter), so image work and LLM generation never use the NPU at the same moment."""

    def __init__(self, inner: ModelRuntime, gate: Callable[[], ContextManager]):
        self.inner = inner
        self.gate = gate
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.path, self.backend = inner.path, inner.backend
        self.core_mask = getattr(inner, "core_mask", None)

    def run(self, feeds: dict) -> list:
        with self.gate():
            return self.inner.run(feeds)

    def input_dtype(self, name: str) -> Optional[np.dtype]:
        return self.inner.input_dtype(name)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):  # backend specifics (e.g. input types) stay reachable
        return getattr(self.inner, name)


def load_runtime(path: Union[str, Path], backend: str = "auto", *, core_index: Optional[int] = 0,
                 threads: Optional[int] = None, rknn_lite_cls: Any = None,
                 gate: Optional[Callable[[], ContextManager]] = None) -> ModelRuntime:
    """Load ``path`` on ``backend`` ("auto": RKNNLite for ``.rknn``, onnxruntime otherwise).

    ``core_index`` picks the NPU core (i % 3, None for AUTO); ``threads`` the onnxruntime thread count.
    ``gate`` (a context-manager factory) is entered around every call: the bridge's NPU arbiter.
    ``rknn_lite_cls`` replaces RKNNLite (tests pass :class:`~image_engine.fake_rknn.FakeRKNNLite`; the
    environment variable ``IMAGE_ENGINE_FAKE_RKNN=1`` does the same for subprocesses).
    Raises :class:`RuntimeFailure` with the reason when the model cannot be loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise RuntimeFailure(f"model file not found: {path}")
    if backend == "auto":
        backend = "rknnlite" if path.suffix.lower() == ".rknn" else "onnxruntime"
    if backend == "onnxruntime":
        runtime: ModelRuntime = OnnxRuntime(path, threads)
    elif backend == "rknnlite":
        runtime = RknnRuntime(path, rknn_lite_cls or _rknn_lite_class(), core_mask_for(core_index))
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'")
    log.info("loaded %s on %s%s", path.name, backend,
             f" (core mask {runtime.core_mask})" if isinstance(runtime, RknnRuntime) else "")
    return GatedRuntime(runtime, gate) if gate is not None else runtime
