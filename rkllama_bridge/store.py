"""The model store: ``DIR/<name>/Modelfile`` next to weights and tokenizer files, as rkllama lays it out."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import BadRequest, ModelNotFound, ModelUnavailable
from .modelfile import Modelfile, ModelfileError, read_modelfile
from .tokenizer import ChatTokenizer, TokenizerError

log = logging.getLogger(__name__)

# Model names are directory names: letters, digits and . _ - : (Ollama-style tags), never a path.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")

DEFAULT_NUM_CTX = 4096


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest("model name must be a non-empty string", code="invalid_model_name")
    if not _NAME.match(name) or ".." in name:
        raise BadRequest(f"invalid model name {name[:80]!r}: use letters, digits and . _ - : only",
                         code="invalid_model_name")
    return name


@dataclass
class StoredModel:
    """One model directory, parsed: its Modelfile and its tokenizer."""

    name: str
    directory: Path
    modelfile: Modelfile
    tokenizer: ChatTokenizer

    @property
    def num_ctx(self) -> int:
        return int(self.modelfile.get("NUM_CTX", DEFAULT_NUM_CTX))

    @property
    def hf_repo(self) -> Optional[str]:
        return self.modelfile.get("HUGGINGFACE_PATH")

    @property
    def system_prompt(self) -> Optional[str]:
        return self.modelfile.get("SYSTEM") or None

    def size_bytes(self) -> int:
        weights = self.directory / str(self.modelfile.get("FROM"))
        if weights.is_file():
            return weights.stat().st_size
        if weights.is_dir():
            return sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
        return 0


class ModelStore:
    """Lists and resolves models below one directory. Parsed models are cached until the Modelfile changes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: Dict[str, tuple] = {}

    def names(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and (p / "Modelfile").is_file() and _NAME.match(p.name))

    def get(self, name: str) -> StoredModel:
        validate_name(name)
        directory = self.root / name
        modelfile_path = directory / "Modelfile"
        if not modelfile_path.is_file():
            available = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found in {self.root} (available: {available})")
        mtime = modelfile_path.stat().st_mtime_ns
        cached = self._cache.get(name)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            modelfile = read_modelfile(modelfile_path)
            tokenizer = ChatTokenizer(directory)
        except (ModelfileError, TokenizerError) as exc:
            raise ModelUnavailable(str(exc), code="invalid_model") from None
        if modelfile.unknown_keys:
            log.info("model %s: Modelfile keys kept but not interpreted: %s", name, ", ".join(modelfile.unknown_keys))
        model = StoredModel(name=name, directory=directory, modelfile=modelfile, tokenizer=tokenizer)
        self._cache[name] = (mtime, model)
        return model
