"""Settings of the exo side: the engine, the pool, the image engine and ``exo-rk serve``, one typed model.

:data:`PROGRAM` generates the ``exo-rk serve`` flags, the ``EXO_RK_*`` variables, the ``--config`` file keys
and the README's table from :class:`Settings`. Inside exo (which builds the engine itself) the environment
is the only source. The seed-compatible names (``RKLLM_SERVERS``, ``RKLLM_SERVER_HOST`` / ``_PORT``,
``RKLLM_TOKEN``, ``RKLLM_*`` timeouts, ``RKNN_IMAGE_*``, ``EXO_HOME``) are documented aliases. Bridges come
from ``servers`` (``--bridge``), else ``servers_file`` (re-read by the pool when it changes), else
``server_host:server_port``. A config file's ``models`` table holds model cards (:mod:`exo_rk.model_cards`).
To add a setting, add one ``setting(...)`` line to :class:`Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Tuple

from rk_common.settings import Program, SettingsError, setting

MODES = ("auto", "stream", "oneshot")
MERGE_MODES = ("auto", "always", "never")
STOCK_ROUTES = ("openai", "ollama", "generate", "oneshot")  # exo_rk.stock_routes, best first
DEFAULT_MODEL_ID = "smollm2-135m-instruct"  # the embedded default model of the bridge (a card of its own)


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


def parse_routes(text: str) -> Tuple[str, ...]:
    """``"openai, generate"`` → ``("openai", "generate")``; unknown names raise ValueError."""
    routes = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [r for r in routes if r not in STOCK_ROUTES]
    if unknown or not routes:
        raise ValueError(f"stock routes must be some of {', '.join(STOCK_ROUTES)}, got {text!r}")
    return routes


def _lower(text: str) -> str:
    return text.strip().lower()


@dataclass(frozen=True)
class Settings:
    """Where the bridges are and how long to wait for them. Immutable: use ``with_()`` to derive."""

    servers: Tuple[str, ...] = setting((), "bridges, host:port or URL (repeatable; comma-separated in env)",
                                       aliases=("RKLLM_SERVERS",), flags=("--bridge",), parse=parse_servers,
                                       shown="server_host:server_port")
    servers_file: Optional[Path] = setting(None, "file of bridges, one host:port per line (# comments), used "
                                           "without servers; re-read by the pool when it changes",
                                           aliases=("RKLLM_SERVERS_FILE",))
    resolve_interval: float = setting(0.0, "seconds between DNS look-ups of the bridges given by name: every "
                                      "address a name resolves to is one bridge of the pool, added and removed "
                                      "as DNS changes (0 = off: a name is one bridge, resolved per connection)",
                                      aliases=("RKLLM_POOL_RESOLVE_SECONDS",), minimum=0,
                                      why="a Kubernetes headless Service (or a DNS round robin) names every "
                                          "ready bridge with one name; off by default so a name keeps meaning "
                                          "one board")
    server_host: str = setting("localhost", "the one bridge used without servers and servers_file",
                               aliases=("RKLLM_SERVER_HOST",))
    server_port: int = setting(8080, "its port", aliases=("RKLLM_SERVER_PORT",), minimum=1)
    token: Optional[str] = setting(None, "bearer token sent to every bridge", aliases=("RKLLM_TOKEN",
                                                                                       "RKLLAMA_BRIDGE_TOKEN"))
    mode: str = setting("auto", "auto (native stream when the bridge has it, else one-shot), stream or oneshot",
                        aliases=("RKLLM_MODE",), choices=MODES, parse=_lower)
    stock_routes: Tuple[str, ...] = setting(STOCK_ROUTES, "one-shot mode: the "
                                            "routes tried on a stock rkllama, best first (openai = /v1/chat/"
                                            "completions stream, ollama = /api/chat stream, generate = /generate "
                                            "stream, oneshot = /generate answered whole and cached)",
                                            aliases=("RKLLM_STOCK_ROUTES",), parse=parse_routes,
                                            why="streaming routes keep the server's time to first token; the "
                                                "cached one-shot answer is the last resort")
    stock_unload_other: bool = setting(False, "one-shot mode: unload a different model loaded on a stock "
                                       "rkllama that serves one model at a time (else that is an error)",
                                       aliases=("RKLLM_STOCK_UNLOAD_OTHER",),
                                       why="the model may be another user's: unloading it is the operator's call")
    merge_system: str = setting("auto", "one-shot mode: merge system messages into the first user turn: auto "
                                "(when the server refuses them), always or never", aliases=("RKLLM_MERGE_SYSTEM",),
                                choices=MERGE_MODES, parse=_lower)
    connect_timeout: float = setting(5.0, "seconds to open a connection to a bridge",
                                     aliases=("RKLLM_CONNECT_TIMEOUT",), positive=True,
                                     why="a LAN connect takes milliseconds: a dead board is found fast, and "
                                         "failover still has the whole first-token wait left")
    first_token_timeout: float = setting(300.0, "seconds to wait for the first token, queue, load and prefill "
                                         "included", aliases=("RKLLM_FIRST_TOKEN_TIMEOUT",), positive=True,
                                         why="a full bridge queue plus a model load; it must stay under "
                                             "request_ttl and request_timeout (checked at start)")
    token_timeout: float = setting(60.0, "seconds to wait for each next token before the request is ended",
                                   aliases=("RKLLM_TOKEN_TIMEOUT",), positive=True,
                                   why="a board makes a token every 25-100 ms; a minute without one is a stall")
    request_ttl: float = setting(360.0, "seconds after which a request exo stopped asking about is evicted",
                                 aliases=("RKLLM_REQUEST_TTL",), positive=True,
                                 why="longer than the first-token wait (300 s): a request still waiting for its "
                                     "first token is never evicted (it was 120)")
    call_idle_timeout: float = setting(30.0, "once tokens wait in the engine's buffer, seconds without a call "
                                       "after which the caller counts as gone and the bridge's generation is "
                                       "aborted", aliases=("RKLLM_CALL_IDLE_TIMEOUT",), positive=True,
                                       why="exo asks for the next token at once and never says it stopped; "
                                           "30 s of buffered, unread tokens means nobody will read them")
    max_requests: int = setting(256, "requests held at once; the least recently used go first",
                                aliases=("RKLLM_MAX_REQUESTS",), minimum=1)
    models_file: Optional[Path] = setting(None, "TOML or YAML file of extra model cards",
                                          aliases=("RKLLM_MODELS_FILE",),
                                          shown="the config file's models table, else <user config>/exo-rk/"
                                                "models.toml")
    exo_home: Path = setting(factory=lambda: Path.home() / ".cache" / "exo", help="exo's home; tokenizers are "
                             "written to $EXO_HOME/downloads/<org>--<name>", aliases=("EXO_HOME",),
                             shown="~/.cache/exo")
    health_interval: float = setting(2.0, "seconds between health checks of each bridge in a pool",
                                     aliases=("RKLLM_HEALTH_INTERVAL",), positive=True,
                                     why="a dead board leaves the pool within seconds; at most health_max_backoff")
    health_max_backoff: float = setting(2.0, "longest wait between checks of a bridge that is down",
                                        aliases=("RKLLM_HEALTH_MAX_BACKOFF",), positive=True,
                                        why="a probe of a dead address is one refused connect: a board that "
                                            "comes back rejoins within 2 s (it was 10)")
    first_token_floor: float = setting(10.0, "least time one bridge of a pool gets to send a request's first "
                                       "token before the request moves to another bridge",
                                       aliases=("RKLLM_FIRST_TOKEN_FLOOR",), positive=True,
                                       why="network, the first decode step and a cold cache, on any prompt")
    first_token_cap: float = setting(120.0, "most time one bridge of a pool gets for a first token (between "
                                     "floor and cap: 3 x its measured prefill speed x the prompt length)",
                                     aliases=("RKLLM_FIRST_TOKEN_CAP",), positive=True,
                                     why="a long prompt on a slow board, a model load or a queue; the whole wait "
                                         "stays first_token_timeout")
    max_prompt_chars: int = setting(1_048_576, "exo-rk serve: longest conversation in characters, refused (413) "
                                    "before it is templated or tokenized", aliases=("RKLLM_MAX_PROMPT_CHARS",),
                                    minimum=1, why="about 250,000 tokens, beyond any RK model's context; "
                                                   "tokenizing more costs seconds of CPU per request")
    request_timeout: float = setting(870.0, "deadline of a whole request through a pool, in seconds",
                                     aliases=("RKLLM_REQUEST_TIMEOUT",), positive=True,
                                     why="under exo's 900 s API timeout, so the request ends cleanly with a log "
                                         "line before exo gives up on it (it was 1800, which never fired in exo)")
    image_servers: Tuple[str, ...] = setting((), "image servers for exo's image model ids",
                                             aliases=("RKNN_IMAGE_SERVERS",), parse=parse_servers,
                                             shown="the bridges' /image routes")
    image_mode: Optional[str] = setting(None, "image mode used for exo's image model ids",
                                        aliases=("RKNN_IMAGE_MODE",), shown="the server's current mode")
    image_step_timeout: float = setting(150.0, "seconds to wait for each image generation step",
                                        aliases=("RKNN_IMAGE_STEP_TIMEOUT",), positive=True,
                                        why="the image server's own deadline (120 s, queue included) plus a "
                                            "margin, so its 504 arrives first (it was 600)")
    host: str = setting("127.0.0.1", "exo-rk serve: bind address (another one without api_token is warned about)")
    port: int = setting(52415, "exo-rk serve: port (exo's; 0 = any free)", minimum=0)
    port_file: Optional[Path] = setting(None, "exo-rk serve: write the bound port here once listening")
    api_token: Optional[str] = setting(None, "exo-rk serve: bearer token clients must send on every route but "
                                       "/health")
    default_model: str = setting(DEFAULT_MODEL_ID, "exo-rk serve: model used when a request names none")
    shutdown_grace: float = setting(30.0, "exo-rk serve: seconds a SIGTERM/SIGINT leaves running replies to finish "
                                    "(new ones get 503) before they are cut with finish 'length'; a second "
                                    "signal exits at once", minimum=0,
                                    why="Kubernetes' default terminationGracePeriodSeconds")
    log_level: str = setting("INFO", "exo-rk serve: logging level")

    def __post_init__(self) -> None:
        if not self.servers:
            servers = read_servers_file(self.servers_file) if self.servers_file is not None else \
                (_normalise_server(f"{self.server_host.strip() or 'localhost'}:{self.server_port}"),)
            object.__setattr__(self, "servers", servers)
        if self.mode not in MODES:
            raise ValueError(f"RKLLM_MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_requests < 1:
            raise ValueError("RKLLM_MAX_REQUESTS must be at least 1")

    def validate(self) -> None:
        """Refuse timeouts that contradict each other (one line, naming both settings)."""
        waits = {"first_token_timeout": self.first_token_timeout, "token_timeout": self.token_timeout}
        longest = max(waits, key=waits.get)
        if self.request_ttl < waits[longest]:
            raise SettingsError(f"request_ttl ({self.request_ttl:g} s) is shorter than {longest} "
                                f"({waits[longest]:g} s): a request still waiting would be evicted")
        if self.request_timeout < self.first_token_timeout:
            raise SettingsError(f"request_timeout ({self.request_timeout:g} s) is shorter than first_token_timeout "
                                f"({self.first_token_timeout:g} s): the first-token wait could never be used")
        if self.first_token_floor > self.first_token_cap:
            raise SettingsError(f"first_token_floor ({self.first_token_floor:g} s) exceeds first_token_cap "
                                f"({self.first_token_cap:g} s)")
        if self.health_max_backoff < self.health_interval:
            raise SettingsError(f"health_max_backoff ({self.health_max_backoff:g} s) is shorter than "
                                f"health_interval ({self.health_interval:g} s)")

    @property
    def downloads_dir(self) -> Path:
        """exo's downloads directory, where its ``resolve_tokenizer`` looks first."""
        return self.exo_home / "downloads"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """The settings of the environment (``EXO_RK_*`` and the aliases); bad values raise SettingsError."""
        return PROGRAM.from_env(env)


def _cards_file(path: Path, models: object) -> Mapping[str, object]:
    """A config file with a ``models`` table is also the model cards file."""
    return {"models_file": path}


PROGRAM = Program("exo-rk serve", Settings, "EXO_RK_", {"models": _cards_file})
