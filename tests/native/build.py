"""Build the stub librkllmrt (``stub_rkllm.c``) with gcc, once per ABI, cached under ``tests/native/build/``.

``build_stub(abi)`` returns the path of a shared library that follows the named ABI's ``rkllm.h``;
it recompiles only when the source, the compiler flags or the embedded version changed.
``stub_env(abi, ...)`` gives the environment a bridge subprocess needs to run ``--runtime rkllm`` on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "stub_rkllm.c"
BUILD_DIR = HERE / "build"

#: ABI name (as rkllama_bridge.rkllm uses it) -> (value of -DRKLLM_ABI, release version embedded by default)
ABIS = {
    "1.1": (110, "1.1.4"),
    "1.2.0": (120, "1.2.0"),
    "1.2.1": (121, "1.2.3"),
    "1.3": (130, "1.3.0"),
}

CFLAGS = ["-std=gnu11", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-pthread"]


def build_stub(abi: str, version: str | None = None) -> Path:
    """Compile the stub for ``abi`` (embedding ``version``, default the ABI's usual release); return the .so."""
    if abi not in ABIS:
        raise ValueError(f"unknown ABI {abi!r}; known: {', '.join(ABIS)}")
    abi_num, default_version = ABIS[abi]
    version = version or default_version
    source = SOURCE.read_bytes()
    flags = CFLAGS + [f"-DRKLLM_ABI={abi_num}", f'-DSTUB_VERSION="{version}"']
    digest = hashlib.sha256(source + "\0".join(flags).encode()).hexdigest()[:16]
    out_dir = BUILD_DIR / f"abi-{abi}-v{version}-{digest}"
    lib = out_dir / "librkllmrt.so"
    if lib.exists():
        return lib
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the stub librkllmrt (apt-get install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so concurrent test processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([gcc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building the stub for ABI {abi} failed:\n{proc.stderr}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in BUILD_DIR.glob(f"abi-{abi}-v{version}-*"):  # builds of an older source
        if stale != out_dir:
            shutil.rmtree(stale, ignore_errors=True)
    return lib


def stub_env(abi: str, reply_ids: Sequence[int] | None = None, *, version: str | None = None,
             delay_ms: int | None = None, error_after: int | None = None, record: os.PathLike | None = None,
             init_fail: bool = False, force_abi: bool = False, embed_dim: int | None = None) -> dict:
    """Environment variables that make ``--runtime rkllm`` run on the stub built for ``abi``.

    ``reply_ids`` are the token ids every generation emits (default: the stub's fixed sequence);
    ``delay_ms`` is a per-token delay, ``error_after`` makes the stub report ERROR after n tokens,
    ``record`` is a JSONL file receiving one line per ``rkllm_run``. ``force_abi`` also sets
    ``RKLLM_ABI`` (normally the ABI is detected from the library's embedded version string);
    ``embed_dim`` is the floats per image token the stub reads from a multimodal input.
    """
    env = {"RKLLM_LIB": str(build_stub(abi, version))}
    if force_abi:
        env["RKLLM_ABI"] = abi
    if reply_ids is not None:
        env["RKLLM_STUB_REPLY_IDS"] = ",".join(str(int(i)) for i in reply_ids)
    if delay_ms is not None:
        env["RKLLM_STUB_DELAY_MS"] = str(int(delay_ms))
    if error_after is not None:
        env["RKLLM_STUB_ERROR_AFTER"] = str(int(error_after))
    if record is not None:
        env["RKLLM_STUB_RECORD"] = str(record)
    if init_fail:
        env["RKLLM_STUB_INIT_FAIL"] = "1"
    if embed_dim is not None:
        env["RKLLM_STUB_EMBED_DIM"] = str(int(embed_dim))
    return env


def write_stub_model(path: os.PathLike, toolkit_version: str = "1.2.3", platform: str = "RK3588") -> Path:
    """Write a small stand-in ``.rkllm`` file whose header names the toolkit version that converted it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"RKLLM-STUB\0rkllm-toolkit version: {toolkit_version}\0target_platform: {platform}\0"
              "max_context_limit: 4096\0").encode()
    path.write_bytes(header + bytes(4096 - len(header)))
    return path


if __name__ == "__main__":
    for name in ABIS:
        print(name, build_stub(name))
