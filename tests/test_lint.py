"""The code stays ruff-clean (rules in ruff.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        found = shutil.which("ruff")
        if not found:
            pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
        ruff = Path(found)
    result = subprocess.run([str(ruff), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
