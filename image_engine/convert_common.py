"""What every ``image-engine convert`` part shares: options, progress, calibration sets, one build + export.

A *part* is one ONNX file that becomes one ``.rknn``: the SR model, or the text encoder, UNet or VAE decoder
of an LCM model. Each part is built in memory (rknn-toolkit2), measured on the simulator against
onnxruntime, exported, and described by its sidecar (``image_engine/rknn_sidecar.py``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .rknn_sidecar import BuildRecord, file_sha256, write_sidecar
from .rknn_toolkit import BuildSpec, Built, build, toolkit_version

log = logging.getLogger(__name__)

DTYPE_CHOICES = ("fp16", "int8", "auto")


@dataclass(frozen=True)
class ConvertOptions:
    """The ``convert`` command's settings (CLI flags)."""

    target: str = "rk3588"
    dtype: str = "fp16"
    output: Optional[Path] = None
    calibration: Optional[Path] = None
    holdout: Optional[Path] = None
    tile: int = 224
    size: Optional[tuple[int, int]] = None
    auto_max_db_loss: float = 0.1      # SR: int8 kept if it loses at most this much PSNR on any held-out image
    auto_max_rel_error: float = 0.005  # LCM: int8 kept for a part if its mean abs error / mean abs output <= this
    steps: int = 4
    progress: Callable[[str], None] = field(default=print, compare=False)


@dataclass
class PartBuild:
    """One candidate build of a part, kept in memory until it is chosen (exported) or dropped."""

    dtype: str
    built: Built
    seconds: float


class Progress:
    """``[i/n] part: message`` lines with the time since the part started."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say, self.index = total, say, 0
        self._started = time.perf_counter()

    def part(self, name: str) -> None:
        self.index += 1
        self._name, self._started = name, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.say(f"[{self.index}/{self.total}] {self._name}: {message} ({time.perf_counter() - self._started:.1f}s)")


def build_candidate(onnx: Path, io: "PartIO", dtype: str, opts: ConvertOptions, dataset: Optional[Path],
                    progress: Progress) -> PartBuild:
    progress(f"building {dtype} for {opts.target}, inputs {dict(zip(io.inputs, io.shapes, strict=True))}")
    started = time.perf_counter()
    built = build(BuildSpec(onnx, list(io.inputs), io.shapes, opts.target, dtype, dataset if dtype == "int8" else None),
                  layer_table=True)
    seconds = time.perf_counter() - started
    progress(f"{dtype} built in {seconds:.1f}s; on the CPU: {', '.join(built.cpu_ops) or 'nothing'}")
    return PartBuild(dtype, built, seconds)


def candidates_for(dtype: str) -> tuple[str, ...]:
    """The builds a ``--dtype`` needs: auto measures both."""
    return ("fp16", "int8") if dtype == "auto" else (dtype,)


@dataclass(frozen=True)
class PartIO:
    """A part's fixed interface: input names and shapes (NCHW), output names."""

    inputs: list[str]
    shapes: list[list[int]]
    outputs: list[str]


def export_part(candidate: PartBuild, rknn_path: Path, onnx_copy: Path, io: PartIO, kind: str,
                opts: ConvertOptions, dataset: Optional[Path], samples: int, quality: dict,
                reason: str) -> BuildRecord:
    """Write ``rknn_path`` and its sidecar (paths in the sidecar are relative to it); returns the record."""
    candidate.built.export(rknn_path)
    base = rknn_path.parent
    int8 = candidate.dtype == "int8"
    record = BuildRecord(
        source_onnx=_relative(onnx_copy, base), onnx_sha256=file_sha256(onnx_copy), target=opts.target,
        dtype=candidate.dtype, inputs=list(io.inputs), input_shapes=[list(s) for s in io.shapes],
        outputs=list(io.outputs), calibration=_relative(dataset, base) if int8 and dataset else None,
        calibration_samples=samples if int8 else 0, toolkit_version=toolkit_version(), kind=kind,
        cpu_ops=list(candidate.built.cpu_ops), quality=quality, dtype_reason=reason)
    write_sidecar(rknn_path, record)
    return record


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def write_dataset(directory: Path, samples: Sequence[Sequence[np.ndarray]]) -> Path:
    """rknn-toolkit2's calibration format: one line per sample, its inputs' ``.npy`` files (NCHW) in order."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, arrays in enumerate(samples):
        names = []
        for k, array in enumerate(arrays):
            name = f"{i:04d}_{k}.npy"
            np.save(directory / name, np.ascontiguousarray(array))
            names.append(name)
        lines.append(" ".join(names))
    dataset = directory / "dataset.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


def copy_file(src: Path, dst: Path) -> None:
    """Hard-link when possible (ONNX weights can be gigabytes), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def release_all(candidates: dict[str, PartBuild]) -> None:
    for candidate in candidates.values():
        candidate.built.release()
