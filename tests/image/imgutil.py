"""Helpers of the image_engine tests: test images, crafted files and multipart requests."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
from PIL import Image
from requests.structures import CaseInsensitiveDict

from tests.support import ServerProcess


def make_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like float image: smooth colour gradients plus some texture and a few hard edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for _ in range(channels):
        fy, fx, ph = rng.uniform(0.01, 0.08, 3)
        wave = 0.5 + 0.3 * np.sin(fy * yy + ph * 10) * np.cos(fx * xx)
        planes.append(wave + 0.08 * rng.standard_normal((height, width)))
    img = np.stack(planes, axis=-1)
    img[height // 3: height // 2, width // 4: width // 2] *= 0.4  # an edge that crosses tile borders
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def to_png(image: np.ndarray) -> bytes:
    """Encode a float image as 8-bit PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` with almost no data (a decompression-bomb stand-in)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def multipart(fields: dict, file_bytes: bytes, filename: str = "input.png") -> tuple[bytes, str]:
    """A multipart/form-data body with the ``file`` field and extra text fields; returns (body, type)."""
    boundary = "----image-engine-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + file_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_image(server: ServerProcess, data: bytes, query: str = "", fields: dict | None = None,
               timeout: float = 60.0):
    """POST /superres with ``data`` as the ``file`` field; returns (status, headers, body)."""
    body, ctype = multipart(fields or {}, data)
    status, headers, raw = server.request("POST", "/superres" + query, body, headers={"Content-Type": ctype},
                                          timeout=timeout)
    return status, CaseInsensitiveDict(headers), raw


def engine_argv(*extra: str) -> list:
    return [sys.executable, "-m", "image_engine", "serve", "--host", "127.0.0.1", *extra]
