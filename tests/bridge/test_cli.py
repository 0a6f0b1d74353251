"""The command line: clear messages and non-zero exits for what cannot work."""

import subprocess
import sys

import pytest


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "rkllama_bridge", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, fragment", [
    (["serve", "--models", "/nonexistent/models", "--runtime", "sim"], "does not exist"),
    (["serve", "--runtime", "tpu"], "invalid choice"),
    (["serve", "--queue-max", "-1", "--runtime", "sim"], "--queue-max must be"),
    (["serve", "--instances", "0", "--runtime", "sim"], "--instances must be"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_command_lines_exit_non_zero_with_a_clear_message(args, fragment):
    result = run_cli(*args)
    assert result.returncode != 0
    assert fragment in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_reports_this_machine_and_exits_cleanly():
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "librkllmrt" in result.stdout and "summary:" in result.stdout
