"""Read ``.safetensors`` files with numpy alone (no torch, no safetensors package needed at conversion time).

The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype,
shape and ``data_offsets`` into the byte buffer that follows, and an optional ``__metadata__`` entry.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file; the message says why."""


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. BF16 tensors come back as float32."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise SafetensorsError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise SafetensorsError(f"{path}: header length {header_len} does not fit the file")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    buffer = memoryview(data)[8 + header_len:]
    tensors = {name: _tensor(path, name, spec, buffer) for name, spec in header.items()}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor(path, name: str, spec: object, buffer: memoryview) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = spec["dtype"], [int(d) for d in spec["shape"]], spec["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise SafetensorsError(f"{path}: entry {name!r} lacks dtype, shape or data_offsets") from None
    if not 0 <= begin <= end <= len(buffer):
        raise SafetensorsError(f"{path}: entry {name!r} points outside the file")
    raw = buffer[begin:end]
    if dtype == "BF16":
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = halves.view(np.float32)
    elif dtype in _DTYPES:
        array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    else:
        raise SafetensorsError(f"{path}: entry {name!r} has unsupported dtype {dtype}")
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise SafetensorsError(f"{path}: entry {name!r} holds {array.size} values, shape {shape} needs more")
    return array.reshape(shape).copy()
