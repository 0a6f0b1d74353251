"""Rockchip's rknn-toolkit2 (the PC converter and simulator), behind one small interface.

The toolkit is imported only when a conversion or a simulator run is asked for. It needs the ``convert``
extra plus the wheel itself installed without its deps (its torch pin conflicts with this project's)::

    pip install 'exo-rk[convert]' && pip install --no-deps rknn-toolkit2==2.5.0

Facts this module relies on (rknn-toolkit2 2.5.0): ``rknn.api`` imports torch at import time; the simulator
runs only a model built from ONNX in the same process (``load_rknn`` + ``init_runtime`` gives -1 there) and
accepts only the AUTO core mask; ``inference`` has no ``data_type`` argument.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ImageEngineError

log = logging.getLogger(__name__)

TOOLKIT_PIN = "rknn-toolkit2==2.5.0"
INSTALL_HINT = (f"install the converter: pip install 'exo-rk[convert]' && pip install --no-deps {TOOLKIT_PIN} "
                "(x86_64 or aarch64 Linux, Python 3.8-3.12; `make test` builds such a venv in .venv-rknn)")


class ToolkitMissing(ImageEngineError):
    """rknn-toolkit2 is not installed here."""

    status = 400
    code = "toolkit_missing"


class BuildFailed(ImageEngineError):
    """rknn-toolkit2 refused a model; the message carries the toolkit's own reason."""

    status = 400
    code = "build_failed"


def rknn_class() -> Any:
    """``rknn.api.RKNN``, or :class:`ToolkitMissing` with the install command."""
    try:
        from rknn.api import RKNN
    except ImportError as exc:
        raise ToolkitMissing(f"rknn-toolkit2 is not importable ({exc}); {INSTALL_HINT}") from None
    return RKNN


def toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("rknn-toolkit2")
    except Exception:  # noqa: BLE001 - a version string is informative only
        return "unknown"


@dataclass(frozen=True)
class BuildSpec:
    """Everything one build takes: the ONNX, its fixed input shapes, the target, fp16 or int8 (+ dataset)."""

    onnx: Path
    inputs: list[str]
    input_shapes: list[list[int]]
    target: str
    dtype: str
    dataset: Optional[Path] = None
    quantized_algorithm: str = "normal"


@dataclass
class Built:
    """A built model still in memory (the only form the simulator runs) and what the build log said."""

    rknn: Any
    cpu_ops: list[str]
    log_text: str

    def export(self, path: Path) -> None:
        if self.rknn.export_rknn(str(path)) != 0:
            raise BuildFailed(f"export_rknn({path}) failed:\n{_tail(self.log_text)}")

    def release(self) -> None:
        if self.rknn is not None:
            self.rknn.release()
            self.rknn = None


def build(spec: BuildSpec, layer_table: bool = False) -> Built:
    """Run config → load_onnx → build; :class:`BuildFailed` carries the toolkit's reason (it answers -1 to
    some mistakes and raises ``ValueError`` with a traceback for others).

    ``layer_table`` builds verbosely, for the layer table that says which ops run on the CPU (``cpu_ops``).
    A verbose build also dumps ``check*.onnx`` files into the working directory, so it runs in a scratch
    one: for single-threaded callers only (``image-engine convert``), as the working directory is the
    process's. Quiet builds (the simulator adapter, inside servers) leave ``cpu_ops`` empty.
    """
    cls = rknn_class()
    if spec.dtype == "int8" and spec.dataset is None:
        raise BuildFailed(f"an int8 build of {spec.onnx.name} needs a calibration dataset")
    onnx, dataset = str(Path(spec.onnx).resolve()), spec.dataset and str(Path(spec.dataset).resolve())
    scratch = _scratch_cwd() if layer_table else contextlib.nullcontext()
    with captured_output() as captured, scratch:
        rknn = cls(verbose=layer_table)
        try:
            _step(lambda: rknn.config(target_platform=spec.target, quantized_algorithm=spec.quantized_algorithm,
                                      optimization_level=3), "config", spec, captured)
            _step(lambda: rknn.load_onnx(model=onnx, inputs=list(spec.inputs),
                                         input_size_list=[list(s) for s in spec.input_shapes]),
                  "load_onnx", spec, captured)
            quantize = spec.dtype == "int8"
            _step(lambda: rknn.build(do_quantization=quantize, dataset=dataset if quantize else None),
                  "build", spec, captured)
        except BaseException:
            rknn.release()
            raise
    text = captured.getvalue()
    return Built(rknn, parse_cpu_ops(text), text)


def _step(call: Callable[[], int], what: str, spec: BuildSpec, captured: io.StringIO) -> None:
    try:
        rc = call()
    except Exception as exc:  # noqa: BLE001 - the toolkit raises ValueError/RuntimeError with its reason
        rc, reason = -1, last_line(str(exc))
    else:
        reason = ""
    if rc != 0:
        where = f"rknn-toolkit2 {what} failed for {spec.onnx} ({spec.dtype}, {spec.target})"
        raise BuildFailed(f"{where}: {reason}" if reason else f"{where}:\n{_tail(captured.getvalue())}")


def last_line(text: str) -> str:
    """The toolkit's reason: the last non-empty line of its message (the rest is its traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# The build log's "Network Layer Information Table": "ID OpType DataType Target InputShape ..." rows,
# each after a "D RKNN: [time]" prefix. Input and output operators are always listed on the CPU.
_ROW = re.compile(r"\]\s+\d+\s+(?P<op>[A-Za-z][A-Za-z0-9_]*)\s+\S+\s+(?P<target>CPU|NPU)\b")
_BOUNDARY_OPS = ("InputOperator", "OutputOperator")


def parse_cpu_ops(log_text: str) -> list[str]:
    """Operator types the build placed on the CPU (unique, in table order; inputs/outputs left out)."""
    start = log_text.find("Network Layer Information Table")
    seen: list[str] = []
    if start < 0:
        return seen
    end = log_text.find("Feature Tensor Information Table", start)
    for match in _ROW.finditer(log_text[start:end if end > 0 else None]):
        op = match.group("op")
        if match.group("target") == "CPU" and op not in _BOUNDARY_OPS and op not in seen:
            seen.append(op)
    return seen


@contextlib.contextmanager
def _scratch_cwd():
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="rknn-build-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


_CAPTURE_LOCK = threading.Lock()  # file descriptors 1 and 2 belong to the whole process


@contextlib.contextmanager
def captured_output():
    """Capture what the toolkit prints (it writes to file descriptors 1 and 2 from native code too); the text
    goes to the debug log. One capture at a time in the process."""
    buffer = io.StringIO()
    with _CAPTURE_LOCK, tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield buffer
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, keep in zip((1, 2), saved, strict=True):
                os.dup2(keep, fd)
                os.close(keep)
            sink.seek(0)
            buffer.write(sink.read().decode("utf-8", "replace"))
            log.debug("rknn-toolkit2 said:\n%s", buffer.getvalue())
