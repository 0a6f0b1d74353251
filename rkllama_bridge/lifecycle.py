"""Model lifecycle pieces the service uses: Ollama-style ``keep_alive`` durations, the weights-size
estimate for memory-pressure eviction, and the state file that lets a restarted bridge load again the
models that were loaded before.

``keep_alive`` follows Ollama: a number is seconds, a string is a Go-style duration ("5m", "1h30m",
"90s", "250ms") or a number in a string; 0 unloads the model as soon as the request is done; any
negative value keeps it loaded forever (``None`` here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import List, Optional

from .errors import BadRequest

log = logging.getLogger(__name__)

FOREVER = None  # keep_alive value meaning "never unload"
DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default: five minutes
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: object, field: str = "keep_alive") -> Optional[float]:
    """Seconds to keep a model loaded after its last request, or None (forever). Raises BadRequest."""
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"'{field}' must be a duration such as \"5m\", a number of seconds, 0 or -1",
                         code="invalid_parameter")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration(value.strip(), field)
    else:
        raise BadRequest(f"'{field}' must be a string or a number, got {type(value).__name__}",
                         code="invalid_parameter")
    if not math.isfinite(seconds):
        raise BadRequest(f"'{field}' must be finite", code="invalid_parameter")
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise BadRequest(f"'{field}' {text[:40]!r} is not a duration (examples: \"5m\", \"1h30m\", \"90s\", 0, -1)",
                         code="invalid_parameter")
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def describe_keep_alive(seconds: Optional[float]) -> str:
    return "forever" if seconds is None else f"{seconds:g}s"


def weights_size_mb(path: Optional[Path]) -> float:
    """Size on disk of a weights file or directory: the memory estimate before a model is loaded."""
    if path is None or not path.exists():
        return 0.0
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def default_state_path(models_dir: Path, port: int) -> Optional[Path]:
    """Where a bridge serving ``models_dir`` on ``port`` keeps its state, under the user cache dir. An
    ephemeral port (0) identifies no bridge across restarts, so it gets no default state file."""
    if port == 0:
        return None
    from platformdirs import user_cache_dir

    key = hashlib.sha256(str(Path(models_dir).resolve()).encode()).hexdigest()[:12]
    return Path(user_cache_dir("rkllama-bridge")) / f"state-{key}-{port}.json"


class StateFile:
    """The set of loaded models, rewritten atomically on each load and unload (never at shutdown, so a
    restart finds what was loaded while the bridge ran)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> List[dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.path, exc)
            return []
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            log.warning("ignoring state file %s: no 'models' list", self.path)
            return []
        return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    def write(self, models: List[dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "models": models}, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s (loaded models will not be restored)", self.path, exc)
