"""Runs the simulator tier (tests/rknn_sim) under .venv-rknn's Python and reports each of its tests here.

rknn-toolkit2 needs numpy<=1.26.4 and protobuf<=4.25.4, so it lives in a venv of its own (``make test``
creates it). The tier runs once, as one child pytest; every test function it holds shows up here as
``test_simulator_tier[file::name]`` with the child's outcome, and a failure carries the child's report.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import REPO

TIER = REPO / "tests" / "rknn_sim"
PYTHON_ENV = "EXO_RK_RKNN_PYTHON"  # set by `make test`; its absence there is a failure, not a skip


def tier_tests() -> list[str]:
    """``file::name`` of every test function in the tier (read from the source: collecting would need rknn)."""
    names = []
    for path in sorted(TIER.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        names += [f"{path.stem}::{node.name}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    return names


def rknn_python() -> Path | None:
    path = Path(os.environ.get(PYTHON_ENV) or REPO / ".venv-rknn" / "bin" / "python")
    path = path if path.is_absolute() else REPO / path
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def tier_run(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    """Run the tier once; ``{file::name: [(outcome, detail), ...]}`` (one entry per parametrisation)."""
    if importlib.util.find_spec("rknn") is not None:
        pytest.skip("rknn-toolkit2 is importable here: tests/rknn_sim runs directly in this run")
    python = rknn_python()
    if python is None:
        if os.environ.get(PYTHON_ENV):
            pytest.fail(f"{PYTHON_ENV}={os.environ[PYTHON_ENV]} does not exist: `make test` should have created it")
        pytest.skip("no .venv-rknn (rknn-toolkit2 and its simulator): `make test` creates it")
    work = tmp_path_factory.mktemp("rknn-tier")
    junit, log = work / "junit.xml", work / "tier.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([str(python), "-m", "pytest", str(TIER), "-q", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", "-o", "junit_family=xunit1"],
                              cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT, timeout=900)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
    print(f"\nsimulator tier: exit {proc.returncode} in {time.monotonic() - started:.1f}s under {python}\n{tail}")
    if not junit.is_file():
        pytest.fail(f"the simulator tier wrote no report (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
    return parse_junit(junit)


def parse_junit(path: Path) -> dict[str, list[tuple[str, str]]]:
    results: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        key = f"{module}::{case.get('name', '').split('[', 1)[0]}"
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = kind
                detail = f"{case.get('name')}: {element.get('message', '')}\n{element.text or ''}"
                break
        results.setdefault(key, []).append((outcome, detail))
    return results


@pytest.mark.parametrize("name", tier_tests())
def test_simulator_tier(tier_run, name):
    outcomes = tier_run.get(name)
    assert outcomes, f"{name} did not run in the simulator tier (collection error?)"
    bad = [detail for outcome, detail in outcomes if outcome in ("failure", "error")]
    if bad:
        pytest.fail("\n\n".join(bad)[-6000:], pytrace=False)
    if all(outcome == "skipped" for outcome, _ in outcomes):
        pytest.skip(outcomes[0][1][:500])


def test_tier_is_listed():
    """The source scan finds the tier's tests (guards the parametrisation above against an empty list)."""
    names = tier_tests()
    assert len(names) >= 5 and "test_sr_simulator::test_no_seams_at_tile_borders" in names


def test_child_failures_and_skips_reach_this_run(tmp_path):
    """A child run's failing parametrisation and its skip reason come back through the report parser."""
    (tmp_path / "test_child.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('a', [1, 2])\n"
        "def test_param(a):\n    assert a == 1, 'two is not one'\n"
        "def test_skipped():\n    pytest.skip('no board here')\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    "-o", "junit_family=xunit1", str(tmp_path / "test_child.py")], cwd=str(tmp_path),
                   capture_output=True, timeout=120)
    results = parse_junit(junit)
    assert [outcome for outcome, _ in results["test_child::test_param"]] == ["passed", "failure"]
    assert "two is not one" in results["test_child::test_param"][1][1]
    (skipped,) = results["test_child::test_skipped"]
    assert skipped[0] == "skipped" and "no board here" in skipped[1]
