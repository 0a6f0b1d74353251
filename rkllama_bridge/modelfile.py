"""rkllama ``Modelfile`` parsing: ``KEY="value"`` lines next to the weights of one model.

Known keys are typed and validated; unknown keys are kept (and reported by ``unknown_keys``) so that
files written for newer rkllama versions still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping

_LINE = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$')


def _positive_int(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


def _non_negative_float(v: str) -> float:
    x = float(v)
    if not x >= 0:  # also rejects NaN
        raise ValueError("must be a non-negative number")
    return x


def _probability(v: str) -> float:
    x = float(v)
    if not 0.0 < x <= 1.0:
        raise ValueError("must be in (0, 1]")
    return x


def _non_negative_int(v: str) -> int:
    n = int(v)
    if n < 0:
        raise ValueError("must be a non-negative integer")
    return n


#: typed keys of rkllama's Modelfile and what they must look like
KNOWN_KEYS: Dict[str, Callable[[str], object]] = {
    "FROM": str,
    "HUGGINGFACE_PATH": str,
    "SYSTEM": str,
    "TEMPERATURE": _non_negative_float,
    "NUM_CTX": _positive_int,
    "MAX_NEW_TOKENS": _positive_int,
    "TOP_K": _non_negative_int,
    "TOP_P": _probability,
    "REPEAT_PENALTY": _non_negative_float,
    "FREQUENCY_PENALTY": float,
    "PRESENCE_PENALTY": float,
    "ENABLE_THINKING": str,
    "INSTANCES": _positive_int,
    # vision-language models (see rkllama_bridge.vision and the README's "Images in chat")
    "VISION_ENCODER": str,
    "IMAGE_PLACEHOLDER": str,
    "IMAGE_START": str,
    "IMAGE_END": str,
    "IMAGE_CONTENT": str,
}


class ModelfileError(ValueError):
    """A Modelfile that cannot be used; the message names the file, the line and the problem."""


@dataclass
class Modelfile:
    path: Path
    values: Dict[str, object] = field(default_factory=dict)
    raw: Dict[str, str] = field(default_factory=dict)

    @property
    def unknown_keys(self) -> List[str]:
        return sorted(k for k in self.raw if k not in KNOWN_KEYS)

    def get(self, key: str, default=None):
        return self.values.get(key.upper(), default)


# Inside quotes: \\ \" \n \r \t and \uXXXX are escapes; any other backslash is kept as written (paths).
_ESCAPE = re.compile(r'\\(\\|"|n|r|t|u[0-9a-fA-F]{4})')
_SIMPLE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
# Characters that would end a line for some reader: always written as escapes.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return _ESCAPE.sub(lambda m: _SIMPLE.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), value[1:-1])
    return value


def _quote(value: str) -> str:
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch in _LINE_BREAKS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def parse_modelfile(text: str, path: Path = Path("Modelfile")) -> Modelfile:
    """Parse Modelfile text; raise ModelfileError for malformed lines or invalid typed values."""
    mf = Modelfile(path=path)
    # Only \n (or \r\n) ends a line: other Unicode line breaks belong to the value they stand in.
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(stripped)
        if not m:
            raise ModelfileError(f"{path}:{lineno}: expected KEY=\"value\", got {stripped[:60]!r}")
        key, value = m.group(1).upper(), _unquote(m.group(2))
        mf.raw[key] = value
        convert = KNOWN_KEYS.get(key)
        if convert is None:
            mf.values[key] = value
            continue
        try:
            mf.values[key] = convert(value)
        except ValueError as exc:
            raise ModelfileError(f"{path}:{lineno}: {key}={value!r}: {exc}") from None
    if "FROM" not in mf.values:
        raise ModelfileError(f"{path}: missing FROM (the weights file or directory of the model)")
    return mf


def read_modelfile(path: Path) -> Modelfile:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelfileError(f"{path}: not UTF-8 text") from None
    return parse_modelfile(text, path)


def render_modelfile(values: Mapping[str, object]) -> str:
    """The inverse of parse_modelfile for the values given (used to write the default model's file)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key.upper()}={_quote(str(value))}")
    return "\n".join(lines) + "\n"
