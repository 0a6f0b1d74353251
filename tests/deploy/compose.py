"""deploy/compose.yaml as Compose reads it: YAML (anchors and merge keys resolved) with its ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$`` interpolated from an environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"

_VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}``) is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (a loaded YAML tree) with every string interpolated from ``env``, as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else current
        if op in (":?", "?") and missing:
            raise InterpolationError(f"{name}: {arg or 'required'}")
        return current or ""

    return _VAR.sub(substitute, value)


def load_compose(env: Mapping[str, str], path: Path = COMPOSE) -> dict:
    """The compose file at ``path`` interpolated from ``env``."""
    return interpolate(yaml.safe_load(path.read_text()), env)


def environment(service: Mapping[str, Any]) -> dict:
    """A service's ``environment`` (a mapping or a list of ``NAME=value``) as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}
