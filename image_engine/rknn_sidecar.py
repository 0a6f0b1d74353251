"""The sidecar written beside every converted ``.rknn``: how it was built, from what, and how well it does.

``model.rknn`` gets ``model.rknn.json``. It names the source ONNX (relative to the sidecar, with its SHA-256),
the target chip, the data type, the fixed input shapes, the calibration set of an int8 build, the toolkit
version, the operators left on the CPU and the quality measured against onnxruntime. It is what a person
reads to know what a file is, and what the PC simulator needs to rebuild the same model in-process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

SIDECAR_VERSION = 1
DTYPES = ("fp16", "int8")
TARGETS = ("rk3588", "rk3576")


class SidecarError(ValueError):
    """A sidecar is missing, unreadable or does not describe the file next to it."""


@dataclass
class BuildRecord:
    """How one ``.rknn`` was built (everything ``rknn.config``/``load_onnx``/``build`` were given)."""

    source_onnx: str                      # relative to the sidecar's directory
    onnx_sha256: str
    target: str
    dtype: str                            # fp16 | int8
    inputs: list[str]
    input_shapes: list[list[int]]
    outputs: list[str]
    calibration: Optional[str] = None     # dataset.txt relative to the sidecar (int8 only)
    calibration_samples: int = 0
    quantized_algorithm: str = "normal"
    toolkit_version: str = ""
    kind: str = "sr"                      # sr | text_encoder | unet | vae_decoder
    cpu_ops: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    dtype_reason: str = ""
    version: int = SIDECAR_VERSION

    def onnx_path(self, sidecar: Path) -> Path:
        return (sidecar.parent / self.source_onnx).resolve()

    def dataset_path(self, sidecar: Path) -> Optional[Path]:
        return None if self.calibration is None else (sidecar.parent / self.calibration).resolve()


def sidecar_path(rknn_path: Path) -> Path:
    """``model.rknn`` → ``model.rknn.json``."""
    return rknn_path.with_name(rknn_path.name + ".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(rknn_path: Path, record: BuildRecord) -> Path:
    path = sidecar_path(rknn_path)
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return path


def read_sidecar(rknn_path: Path) -> BuildRecord:
    """The build record of ``rknn_path``; :class:`SidecarError` says what is wrong with it."""
    path = sidecar_path(Path(rknn_path))
    if not path.is_file():
        raise SidecarError(f"{path} is missing: {Path(rknn_path).name} was not made by `image-engine convert`")
    try:
        doc = json.loads(path.read_text())
        record = BuildRecord(**doc)
    except (ValueError, TypeError) as exc:
        raise SidecarError(f"{path} is not a valid conversion sidecar: {exc}") from None
    if record.dtype not in DTYPES or record.target not in TARGETS:
        raise SidecarError(f"{path}: unknown dtype {record.dtype!r} or target {record.target!r}")
    return record
