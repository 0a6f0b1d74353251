"""Looking at a ``.rkllm`` file before handing it to the runtime.

The runtime itself only says "invalid rknn llm model magic" or, worse, loads a model converted by
another toolkit release and prints gibberish. This module reads the start of the file and reports:
files that are clearly something else (a Git LFS pointer, an HTML error page, GGUF, safetensors,
an empty file), and the RKLLM toolkit version that converted the model when the
header names it (``rkllm-toolkit version: X``) or, as a weaker hint, when the file or repository
name carries it (``...-rk3588-1.1.4``, ``...RKLLM1.2.1...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import abi_for_version

HEADER_BYTES = 1 << 20

_FOREIGN = (
    (b"version https://git-lfs", "a Git LFS pointer, not the model (fetch the real file with git lfs pull)"),
    (b"<!DOCTYPE", "an HTML page, not a model (the download failed)"),
    (b"<html", "an HTML page, not a model (the download failed)"),
    (b"GGUF", "a GGUF model (for llama.cpp / --runtime host), not an .rkllm model"),
    (b"PK\x03\x04", "a zip archive (e.g. a PyTorch checkpoint), not an .rkllm model"),
    (b"RKNN", "an RKNN vision model (.rknn), not an .rkllm LLM"),
)
_TOOLKIT_IN_HEADER = re.compile(rb"rkllm[-_ ]toolkit[-_ ]?(?:version)?[\"':= ]*v?(\d+\.\d+\.\d+(?:b\d+)?)",
                                re.IGNORECASE)
_VERSION_IN_NAME = re.compile(r"(?:rkllm|rk3588|rk3576|runtime|toolkit)[-_ ]?v?(\d+\.\d+\.\d+(?:b\d+)?)",
                              re.IGNORECASE)


@dataclass(frozen=True)
class ModelFileInfo:
    """What the file's first bytes and name say. ``problem`` is set when the file cannot be a model."""

    path: Path
    size: int
    problem: str | None
    toolkit_version: str | None
    version_source: str | None  # "header" (reliable) or "name" (a hint)


def _safetensors(head: bytes) -> bool:
    return len(head) > 9 and head[8:10] == b'{"'


def inspect_model(path: Path, name_hints: Iterable[str] = ()) -> ModelFileInfo:
    """Inspect ``path``; ``name_hints`` are extra names to search for a version (e.g. HUGGINGFACE_PATH)."""
    path = Path(path)
    if not path.exists():
        return ModelFileInfo(path, 0, "file not found", None, None)
    if not path.is_file():
        return ModelFileInfo(path, 0, "not a file (an .rkllm model is a single file)", None, None)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    problem = None
    for magic, what in _FOREIGN:
        if head.lstrip()[: len(magic)].lower() == magic.lower():
            problem = f"the file is {what}"
            break
    if problem is None and _safetensors(head):
        problem = "the file is a safetensors checkpoint, not an .rkllm model (convert it with rkllm-toolkit)"
    if problem is None and size == 0:
        problem = "the file is empty (an interrupted download?)"
    match = _TOOLKIT_IN_HEADER.search(head)
    if match:
        return ModelFileInfo(path, size, problem, match.group(1).decode(), "header")
    for hint in [path.name, *name_hints]:
        m = _VERSION_IN_NAME.search(hint or "")
        if m and abi_for_version(m.group(1)):
            return ModelFileInfo(path, size, problem, m.group(1), "name")
    return ModelFileInfo(path, size, problem, None, None)


def version_mismatch(model_version: str | None, runtime_version: str | None) -> str | None:
    """A sentence when a model converted by ``model_version`` should not run on ``runtime_version``.

    Toolkit and runtime must come from the same minor release (1.1.x, 1.2.x, 1.3.x): the model format
    changes with it, and mixing them is what produces load failures or gibberish on the board.
    """
    if not model_version or not runtime_version:
        return None
    if model_version.split(".")[:2] == runtime_version.split(".")[:2]:
        return None
    return f"model was converted for RKLLM {model_version} but the runtime is {runtime_version}"
