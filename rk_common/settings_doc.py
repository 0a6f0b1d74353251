"""The README's settings tables, generated from the programs' settings models.

A table sits between ``<!-- settings-table module:PROGRAM -->`` and ``<!-- /settings-table -->``; the marker
names the :class:`~rk_common.settings.Program` it documents, so this module depends on no program.

``python -m rk_common.settings_doc [--check] [README.md]`` rewrites the tables (or, with ``--check``, exits 1
naming the tables that drifted from their models).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from .settings import Leaf, Program, shown_default

BLOCK = re.compile(r"(<!-- settings-table (?P<target>[\w.]+:\w+) -->\n)(?P<body>.*?)(<!-- /settings-table -->)",
                   re.DOTALL)
PRECEDENCE = "flag > environment variable > `--config` file > default"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(program: Program, leaf: Leaf) -> str:
    env, *aliases = program.env_names(leaf)
    env_cell = f"`{env}`" + "".join(f" (`{a}`)" for a in aliases)
    names = (leaf.flag, *leaf.spec.flags)
    if leaf.is_bool:
        names = tuple(f"--[no-]{f[2:]}" for f in names)
    flags = " ".join(f"`{f}`" for f in names)
    meaning = leaf.spec.help + (f". Default: {leaf.spec.why}" if leaf.spec.why else "")
    return f"| `{leaf.name}` | {flags} | {env_cell} | {_cell(shown_default(leaf))} | {_cell(meaning)} |"


def table(program: Program) -> str:
    """The Markdown table of one program: file key, flag, variable (aliases in brackets), default, meaning."""
    lines = [f"Settings of `{program.name}` (precedence: {PRECEDENCE}; `--config FILE` or "
             f"`{program.env_prefix}CONFIG` names a TOML or YAML file whose keys are the first column):",
             "",
             "| setting | flag | environment (aliases) | default | meaning |",
             "|---|---|---|---|---|"]
    lines += [_row(program, leaf) for leaf in program.leaves]
    return "\n".join(lines) + "\n"


def load_program(target: str) -> Program:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def render(text: str) -> str:
    """``text`` with every settings table regenerated from its model."""
    return BLOCK.sub(lambda m: m.group(1) + table(load_program(m.group("target"))) + m.group(4), text)


def drifted(text: str) -> list[str]:
    """The targets whose table in ``text`` differs from what their model generates."""
    return [m.group("target") for m in BLOCK.finditer(text)
            if m.group("body") != table(load_program(m.group("target")))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rk_common.settings_doc", description=__doc__.split("\n")[0])
    parser.add_argument("readme", nargs="?", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1), change nothing")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    if args.check:
        stale = drifted(text)
        for target in stale:
            print(f"{args.readme}: the settings table of {target} differs from its model; run "
                  f"python -m rk_common.settings_doc", file=sys.stderr)
        return 1 if stale else 0
    new = render(text)
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: settings tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
