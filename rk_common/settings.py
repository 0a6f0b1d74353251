"""One typed settings model per program, from which its flags, environment variables and config file come.

A model is a frozen dataclass whose fields are declared with :func:`setting` (one line per setting: default,
help, optional seed-compatible aliases and checks) or :func:`section` (a nested model, e.g. the
super-resolution settings inside the bridge). A :class:`Program` binds a model to an environment prefix and
generates, for every setting named ``queue_max``:

- the flag ``--queue-max`` (booleans get ``--x`` / ``--no-x``, tuples are repeatable),
- the variable ``<PREFIX>QUEUE_MAX`` plus its documented aliases (read after the prefixed name),
- the key ``queue_max`` of the ``--config FILE`` (TOML or YAML; also ``<PREFIX>CONFIG``),
- a row of the README's settings table (see :mod:`rk_common.settings_doc`).

Precedence: flag > environment > config file > default. A value that does not parse, breaks a bound or
contradicts another setting raises :class:`SettingsError` with one line naming the flag, variable or key.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

SPEC = "rk_common.settings.spec"
SECTION = "rk_common.settings.section"
CONFIG_FLAG = "--config"


class SettingsError(ValueError):
    """A setting is malformed or contradicts another; the message (one line) names where it came from."""


@dataclass(frozen=True)
class Spec:
    """What a model field says about itself besides its type and default."""

    help: str
    name: str = ""  # public name when it differs from the field's (flag, env, file key)
    aliases: tuple[str, ...] = ()  # seed-compatible environment names, read after the prefixed one
    flags: tuple[str, ...] = ()  # extra flags, e.g. the historical ``--models``
    choices: tuple[str, ...] = ()
    minimum: Optional[float] = None
    positive: bool = False
    parse: Optional[Callable[[str], Any]] = None  # text → value when the type alone does not say how
    why: str = ""  # why the default is what it is (shown in the README table)
    shown: str = ""  # the default as documented, when the value itself would mislead (paths, computed)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
            **spec: Any) -> Any:
    """A model field that is a setting: ``queue_max: int = setting(8, "requests that may wait")``."""
    metadata = {SPEC: Spec(help, **spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Section:
    prefix: str  # put before each field's name: "sr_" → sr_queue_max, --sr-queue-max, <PREFIX>SR_QUEUE_MAX
    alias_prefix: Optional[str] = None  # seed-compatible variable = alias_prefix + NAME; None: no aliases


def section(factory: Callable[[], Any], prefix: str = "", *, alias_prefix: Optional[str] = None) -> Any:
    """A nested model whose settings are flattened into the program's with ``prefix``."""
    return field(default_factory=factory, metadata={SECTION: Section(prefix, alias_prefix)})


@dataclass(frozen=True)
class Leaf:
    """One setting as a program sees it, with its public name and its place in the nested model."""

    path: tuple[str, ...]
    name: str
    spec: Spec
    hint: Any
    default: Any
    aliases: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return _kind(self.hint)[0] is bool


def leaves(model: type, defaults: Any = None, prefix: str = "", alias_prefix: Optional[str] = None,
           path: tuple[str, ...] = ()) -> list[Leaf]:
    """The settings of ``model`` in declaration order, sections flattened; defaults read from ``defaults``."""
    defaults = model() if defaults is None else defaults
    hints = typing.get_type_hints(model)
    found: list[Leaf] = []
    for f in dataclasses.fields(model):
        if SECTION in f.metadata:
            sub: Section = f.metadata[SECTION]
            found += leaves(hints[f.name], getattr(defaults, f.name), prefix + sub.prefix, sub.alias_prefix,
                            path + (f.name,))
        elif SPEC in f.metadata:
            spec: Spec = f.metadata[SPEC]
            own = spec.name or f.name
            aliases = spec.aliases if path == () else ()
            if alias_prefix is not None:
                aliases = aliases + (alias_prefix + own.upper(),)
            found.append(Leaf(path + (f.name,), prefix + own, spec, hints[f.name], getattr(defaults, f.name),
                              aliases))
    return found


def _kind(hint: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_text(kind: Any, raw: str) -> Any:
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        if raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    if origin is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
    if origin is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    if origin is Path:
        return Path(raw.strip()).expanduser()
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _from_file(kind: Any, value: Any) -> Any:
    """A TOML/YAML value: native types are taken as they are when they fit, text is parsed."""
    origin = typing.get_origin(kind) or kind
    if value is None:  # an empty YAML value: unset
        return ""
    if origin is tuple and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (bool, int, float) and isinstance(value, origin) and (origin is bool) == isinstance(value, bool):
        return value
    return str(value)


def convert(leaf: Leaf, raw: Any, source: str) -> Any:
    """``raw`` (text from a flag or variable, or a file value) as the leaf's type, checked against its bounds."""
    kind, optional = _kind(leaf.hint)
    try:
        if isinstance(raw, list):  # a repeated flag
            raw = ",".join(raw)
        if not isinstance(raw, str):
            raw = _from_file(kind, raw)
        if isinstance(raw, str):
            if raw.strip() == "" and optional:
                return None
            value = leaf.spec.parse(raw) if leaf.spec.parse else _from_text(kind, raw)
        else:
            value = raw
        _check(leaf.spec, value)
    except ValueError as exc:
        raise SettingsError(f"{source} {exc}, got {raw!r}") from None
    return value


def _check(spec: Spec, value: Any) -> None:
    if value is None:
        return
    if spec.choices and value not in spec.choices:
        raise ValueError(f"must be one of {', '.join(spec.choices)}")
    if spec.positive and not value > 0:
        raise ValueError("must be positive")
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"must be at least {spec.minimum:g}")


def read_config_file(path: Path) -> dict:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``, or ``.json``) mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        if Path(path).suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif Path(path).suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - every parser has its own error type; the message is what matters
        raise SettingsError(f"config file {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings at the top level")
    return data


# A structured part of a config file (e.g. ``models``): (file, its value) → setting values it implies.
FileSection = Callable[[Path, Any], Mapping[str, Any]]


@dataclass(frozen=True)
class Program:
    """A settings model bound to a program: its environment prefix, flags, config file and table."""

    name: str  # as in the README: "rkllama-bridge serve"
    model: type
    env_prefix: str  # "RKLLAMA_BRIDGE_"
    file_sections: Mapping[str, FileSection] = field(default_factory=dict)

    @functools.cached_property
    def leaves(self) -> list[Leaf]:
        return leaves(self.model)

    @functools.cached_property
    def _by_name(self) -> dict[str, Leaf]:
        return {leaf.name: leaf for leaf in self.leaves}

    def env_names(self, leaf: Leaf) -> tuple[str, ...]:
        return (self.env_prefix + leaf.name.upper(),) + leaf.aliases

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--config`` and one flag per setting; flags left out stay out of the namespace (precedence)."""
        parser.add_argument(CONFIG_FLAG, type=Path, default=argparse.SUPPRESS, metavar="FILE",
                            help=f"TOML or YAML file of settings (also ${self.env_prefix}CONFIG); "
                                 "flags and environment variables win over it")
        for leaf in self.leaves:
            kind, _ = _kind(leaf.hint)
            env = " / ".join("$" + name for name in self.env_names(leaf))
            text = f"{leaf.spec.help} ({env}; default {shown_default(leaf)})".replace("%", "%%")
            names = [leaf.flag, *leaf.spec.flags]
            if (typing.get_origin(kind) or kind) is bool:
                parser.add_argument(*names, dest=leaf.name, action=argparse.BooleanOptionalAction,
                                    default=argparse.SUPPRESS, help=text)
            elif (typing.get_origin(kind) or kind) is tuple:
                parser.add_argument(*names, dest=leaf.name, action="append", default=argparse.SUPPRESS, help=text)
            else:
                parser.add_argument(*names, dest=leaf.name, default=argparse.SUPPRESS,
                                    choices=leaf.spec.choices or None, help=text)

    def load(self, args: Optional[argparse.Namespace] = None, env: Optional[Mapping[str, str]] = None,
             config_file: Optional[Path] = None) -> Any:
        """The model filled from flags (``args``), ``env`` (default ``os.environ``) and the config file."""
        env = os.environ if env is None else env
        flags = vars(args) if args is not None else {}
        values: dict[str, Any] = {}
        path = flags.get("config") or config_file or env.get(self.env_prefix + "CONFIG") or None
        if path:
            values.update(self._from_file(Path(path)))
        for leaf in self.leaves:
            from_env = self.env_value(leaf.name, env)
            if from_env is not None:
                values[leaf.name] = from_env
            if leaf.name in flags:
                values[leaf.name] = convert(leaf, flags[leaf.name], leaf.flag)
        return self.build(values)

    def from_env(self, env: Optional[Mapping[str, str]] = None) -> Any:
        return self.load(None, env)

    def env_value(self, name: str, env: Optional[Mapping[str, str]] = None) -> Any:
        """One setting from the environment alone (its prefixed name or an alias), or None when unset."""
        env = os.environ if env is None else env
        leaf = self._by_name[name]
        for var in self.env_names(leaf):
            if env.get(var, "") != "":
                return convert(leaf, env[var], var)
        return None

    def _from_file(self, path: Path) -> dict[str, Any]:
        by_key = self._by_name
        values: dict[str, Any] = {}
        data = read_config_file(path)
        for key, raw in data.items():
            if key in self.file_sections:
                values.update(self.file_sections[key](path, raw))
                continue
            leaf = by_key.get(str(key).replace("-", "_"))
            if leaf is None:
                raise SettingsError(f"config file {path}: unknown setting {key!r} (see the settings table in the "
                                    "README)")
            values[leaf.name] = convert(leaf, raw, f"{path}: {key}")
        return values

    def build(self, values: Mapping[str, Any]) -> Any:
        """The model with ``values`` (public name → typed value) over its defaults; contradictions refused."""
        try:
            return _build(self.model, None, {leaf.path: values[leaf.name] for leaf in self.leaves
                                             if leaf.name in values})
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(str(exc)) from None


def _build(model: type, defaults: Any, values: Mapping[tuple[str, ...], Any]) -> Any:
    """The top level is constructed anew (so values it derives in ``__post_init__`` follow the changes); a
    section is its parent's default instance with the changes applied (a parent may default it differently)."""
    changes: dict[str, Any] = {}
    hints = typing.get_type_hints(model)
    for f in dataclasses.fields(model):
        if SECTION in f.metadata:
            inner = {path[1:]: v for path, v in values.items() if path[0] == f.name}
            if inner:
                base = getattr(defaults, f.name) if defaults is not None else f.default_factory()
                changes[f.name] = _build(hints[f.name], base, inner)
        elif (f.name,) in values:
            changes[f.name] = values[(f.name,)]
    if defaults is None:
        built = model(**changes)
    else:
        built = dataclasses.replace(defaults, **changes) if changes else defaults
    validate = getattr(built, "validate", None)
    if callable(validate):
        validate()
    return built


def shown_default(leaf: Leaf) -> str:
    """The default as the flag help and the README table show it."""
    if leaf.spec.shown:
        return leaf.spec.shown
    value = leaf.default
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cli_error(prog: str, exc: SettingsError) -> int:
    """Print the one-line refusal a program gives for bad settings; the exit status to return."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
