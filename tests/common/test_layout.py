"""The package layout the shared HTTP layer promises: rk_common depends on none of the servers, the exo side
never imports the bridge (nor the bridge the exo side), no Flask in a gateway and no aiohttp in a bridge,
and no module imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

from tests.support import REPO

PACKAGES = ("rk_common", "rkllama_bridge", "exo_rk", "image_engine")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, module: str) -> Set[str]:
    """Every module ``path`` imports, at the top or inside functions, as absolute dotted names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def import_graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {m: {d for d in _imported(p, m) if d in files and d != m} for m, p in files.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph[b]})
    assert circles == []


def test_rk_common_depends_on_no_server_and_exo_rk_not_on_the_bridge():
    graph = import_graph()
    into = {(a.split(".")[0], b.split(".")[0]) for a, deps in graph.items() for b in deps}
    assert {pair for pair in into if pair[0] == "rk_common" and pair[1] != "rk_common"} == set()
    assert ("exo_rk", "rkllama_bridge") not in into and ("rkllama_bridge", "exo_rk") not in into


def _loaded_after(statement: str) -> Set[str]:
    """Top-level packages ``statement`` loads beyond what the interpreter loads at start (the exo import
    hook's ``.pth`` loads ``exo_rk.registration`` into every interpreter of this venv)."""
    code = ("import sys; before = set(sys.modules); " + statement +
            "; print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_gateway_loads_no_flask_and_a_bridge_app_no_aiohttp():
    gateway = _loaded_after("import exo_rk.gateway")
    assert not gateway & {"flask", "werkzeug", "rkllama_bridge", "torch"}, gateway
    bridge = _loaded_after("import rkllama_bridge.app")
    assert not bridge & {"aiohttp", "exo_rk", "torch"}, bridge
