"""Configuration of the exo side, one frozen dataclass filled from the environment.

Environment variables (documented once, here):

- ``RKLLM_SERVERS``: comma-separated bridges, ``host:port`` or ``http://host:port``. Takes precedence over
- ``RKLLM_SERVER_HOST`` / ``RKLLM_SERVER_PORT``: a single bridge (defaults ``localhost`` / ``8080``).
- ``RKLLM_SERVERS_FILE``: a file of bridges, one ``host:port`` per line (``#`` comments); used when
  ``RKLLM_SERVERS`` is empty, and re-read by the pool when it changes (bridges join and leave at run time).
- ``RKLLM_HEALTH_INTERVAL``: seconds between health checks of each bridge in a pool (default 2).
- ``RKLLM_HEALTH_MAX_BACKOFF``: longest wait between checks of a bridge that is down (default 10).
- ``RKLLM_REQUEST_TIMEOUT``: deadline of a whole request through a pool, in seconds (default 1800).
- ``RKLLM_TOKEN`` (or ``RKLLAMA_BRIDGE_TOKEN``): bearer token sent to every bridge.
- ``RKLLM_MODE``: ``auto`` (native stream when the server has it, else one-shot), ``stream`` or ``oneshot``.
- ``RKLLM_CONNECT_TIMEOUT``: seconds to open a connection (default 5).
- ``RKLLM_FIRST_TOKEN_TIMEOUT``: seconds to wait for the first token, queue and prefill included (300).
- ``RKLLM_TOKEN_TIMEOUT``: seconds to wait for each next token before the request is ended (60).
- ``RKLLM_REQUEST_TTL``: seconds after which a request exo stopped asking about is evicted (600), counted
  from its last call or its last token from the bridge, whichever is later; a request the engine is waiting
  on is never evicted. Must be at least ``RKLLM_FIRST_TOKEN_TIMEOUT``.
- ``RKLLM_CALL_IDLE_TIMEOUT``: once tokens wait in the engine's buffer, seconds without a call after which
  the caller is taken to have stopped (exo never says so) and the bridge's generation is aborted (30).
- ``RKLLM_MAX_REQUESTS``: cap on the requests held at once; the least recently used go first (256).
- ``RKLLM_MODELS_FILE``: a TOML or YAML file of extra model cards (see ``exo_rk.model_cards``).
- ``EXO_HOME``: exo's home; tokenizers are written to ``$EXO_HOME/downloads/<org>--<name>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Tuple

MODES = ("auto", "stream", "oneshot")


def _normalise_server(item: str) -> str:
    item = item.strip().rstrip("/")
    if not item:
        raise ValueError("empty server entry")
    if "://" not in item:
        item = "http://" + item
    return item


def parse_servers(text: str) -> Tuple[str, ...]:
    """``"a:1, http://b:2"`` → ``("http://a:1", "http://b:2")``; raises ValueError on an empty entry."""
    return tuple(_normalise_server(part) for part in text.split(",") if part.strip())


def read_servers_file(path: Path) -> Tuple[str, ...]:
    """The bridges listed in ``path``: one ``host:port`` or URL per line, ``#`` starts a comment."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"RKLLM_SERVERS_FILE {path}: {exc.strerror or exc}") from None
    servers = parse_servers(",".join(line.split("#", 1)[0] for line in lines))
    if not servers:
        raise ValueError(f"RKLLM_SERVERS_FILE {path} lists no bridge")
    return servers


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where the bridges are and how long to wait for them. Immutable: use ``with_()`` to derive."""

    servers: Tuple[str, ...] = ("http://localhost:8080",)
    token: Optional[str] = None
    mode: str = "auto"
    connect_timeout: float = 5.0
    first_token_timeout: float = 300.0
    token_timeout: float = 60.0
    request_ttl: float = 600.0
    call_idle_timeout: float = 30.0
    max_requests: int = 256
    models_file: Optional[Path] = None
    exo_home: Path = field(default_factory=lambda: Path.home() / ".cache" / "exo")
    servers_file: Optional[Path] = None
    health_interval: float = 2.0
    health_max_backoff: float = 10.0
    request_timeout: float = 1800.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"RKLLM_MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.servers:
            raise ValueError("at least one bridge server is needed")
        if self.max_requests < 1:
            raise ValueError("RKLLM_MAX_REQUESTS must be at least 1")
        if self.request_ttl < self.first_token_timeout:
            raise ValueError(
                f"RKLLM_REQUEST_TTL ({self.request_ttl:g} s) is shorter than RKLLM_FIRST_TOKEN_TIMEOUT "
                f"({self.first_token_timeout:g} s): a request still waiting for its first token would count as "
                f"abandoned; raise RKLLM_REQUEST_TTL or lower RKLLM_FIRST_TOKEN_TIMEOUT"
            )

    @property
    def downloads_dir(self) -> Path:
        """exo's downloads directory, where its ``resolve_tokenizer`` looks first."""
        return self.exo_home / "downloads"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read the variables listed in this module's docstring; invalid values raise ValueError."""
        env = os.environ if env is None else env
        raw_file = env.get("RKLLM_SERVERS_FILE")
        servers_file = Path(raw_file).expanduser() if raw_file else None
        if env.get("RKLLM_SERVERS", "").strip():
            servers = parse_servers(env["RKLLM_SERVERS"])
        elif servers_file is not None:
            servers = read_servers_file(servers_file)
        else:
            host = env.get("RKLLM_SERVER_HOST", "localhost").strip() or "localhost"
            port = env.get("RKLLM_SERVER_PORT", "8080").strip() or "8080"
            if not port.isdigit():
                raise ValueError(f"RKLLM_SERVER_PORT must be a port number, got {port!r}")
            servers = (_normalise_server(f"{host}:{port}"),)
        max_requests = env.get("RKLLM_MAX_REQUESTS", "256")
        if not max_requests.isdigit():
            raise ValueError(f"RKLLM_MAX_REQUESTS must be a whole number, got {max_requests!r}")
        models_file = env.get("RKLLM_MODELS_FILE")
        exo_home = env.get("EXO_HOME")
        return cls(
            servers=servers,
            token=env.get("RKLLM_TOKEN") or env.get("RKLLAMA_BRIDGE_TOKEN") or None,
            mode=(env.get("RKLLM_MODE") or "auto").strip().lower(),
            connect_timeout=_float(env, "RKLLM_CONNECT_TIMEOUT", 5.0),
            first_token_timeout=_float(env, "RKLLM_FIRST_TOKEN_TIMEOUT", 300.0),
            token_timeout=_float(env, "RKLLM_TOKEN_TIMEOUT", 60.0),
            request_ttl=_float(env, "RKLLM_REQUEST_TTL", 600.0),
            call_idle_timeout=_float(env, "RKLLM_CALL_IDLE_TIMEOUT", 30.0),
            max_requests=int(max_requests),
            models_file=Path(models_file).expanduser() if models_file else None,
            exo_home=Path(exo_home).expanduser() if exo_home else Path.home() / ".cache" / "exo",
            servers_file=servers_file,
            health_interval=_float(env, "RKLLM_HEALTH_INTERVAL", 2.0),
            health_max_backoff=_float(env, "RKLLM_HEALTH_MAX_BACKOFF", 10.0),
            request_timeout=_float(env, "RKLLM_REQUEST_TIMEOUT", 1800.0),
        )
