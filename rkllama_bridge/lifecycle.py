"""Model lifecycle pieces the service uses: Ollama-style ``keep_alive`` durations, the weights-size
estimate for memory-pressure eviction, and the state file that lets a restarted bridge load again the
models that were loaded before.

``keep_alive`` follows Ollama: a number is seconds, a string is a Go-style duration ("5m", "1h30m",
"90s", "250ms") or a number in a string; 0 unloads the model as soon as the request is done; any
negative value keeps it loaded forever (``None`` here). A finite keep_alive is at most one year
(``MAX_KEEP_ALIVE_S``): anything longer is a 400 that says to use -1, so no client can store a value
that later breaks the arithmetic of ``expires_at`` (``1e308`` once made every ``/api/ps`` a 500).
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
MAX_KEEP_ALIVE_S = 365 * 24 * 3600.0  # one year; longer means "forever": say -1
MAX_INSTANCES = 64  # handles of one model a state file may ask for
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: object, field: str = "keep_alive") -> Optional[float]:
    """Seconds to keep a model loaded after its last request, or None (forever). Raises BadRequest."""
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"'{field}' must be a duration such as \"5m\", a number of seconds, 0 or -1",
                         code="invalid_parameter")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            seconds = math.inf if value > 0 else -1.0
    elif isinstance(value, str):
        seconds = _parse_duration(value.strip(), field)
    else:
        raise BadRequest(f"'{field}' must be a string or a number, got {type(value).__name__}",
                         code="invalid_parameter")
    if math.isnan(seconds) or seconds > MAX_KEEP_ALIVE_S:
        raise BadRequest(f"'{field}' must be at most one year ({MAX_KEEP_ALIVE_S:.0f} s); use -1 to keep the model "
                         "loaded forever", code="invalid_parameter")
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


def _invalid_entry(item: object) -> Optional[str]:
    """Why a state file entry cannot be restored, or None when it can."""
    from .store import validate_name

    if not isinstance(item, dict):
        return "not an object"
    try:
        validate_name(item.get("name"))
    except BadRequest as exc:
        return exc.message
    instances = item.get("instances")
    if instances is not None and (isinstance(instances, bool) or not isinstance(instances, int)
                                  or not 1 <= instances <= MAX_INSTANCES):
        return f"instances must be an integer 1..{MAX_INSTANCES}"
    keep = item.get("keep_alive_s", DEFAULT_KEEP_ALIVE_S)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float))
                             or not 0 <= keep <= MAX_KEEP_ALIVE_S):
        return f"keep_alive_s must be null (forever) or 0..{MAX_KEEP_ALIVE_S:.0f} seconds"
    return None


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
        return [entry for entry in (self._valid(i, m) for i, m in enumerate(models)) if entry is not None]

    def _valid(self, index: int, item: object) -> Optional[dict]:
        """Entry ``index`` as restore() takes it, or None (with a log line saying why it was dropped)."""
        why = _invalid_entry(item)
        if why:
            log.warning("state file %s: dropping entry %d (%s): %s", self.path, index, why, str(item)[:120])
            return None
        return {"name": item["name"], "instances": item.get("instances"),
                "keep_alive_s": item.get("keep_alive_s", DEFAULT_KEEP_ALIVE_S)}

    def write(self, models: List[dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "models": models}, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s (loaded models will not be restored)", self.path, exc)
