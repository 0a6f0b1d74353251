"""The three programs refuse bad settings at start: one line on stderr, exit status 2, nothing served."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


def run(argv: list, env: dict, tmp_path) -> subprocess.CompletedProcess:
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", *argv], env=full_env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv, env, message", [
    (["exo_rk", "serve", "--port", "0"], {"RKLLM_REQUEST_TTL": "100"},
     "exo-rk: error: request_ttl (100 s) is shorter than first_token_timeout (300 s)"),
    (["rkllama_bridge", "serve", "--runtime", "sim", "--port", "0", "--sr-max-upload-bytes", "60000000"], {},
     "rkllama-bridge: error: sr_max_upload_bytes (60000000)"),
    (["image_engine", "serve", "--port", "0"], {"SR_QUEUE_MAX": "none"},
     "image-engine serve: error: SR_QUEUE_MAX must be a whole number, got 'none'"),
])
def test_a_program_with_bad_settings_exits_2_with_one_line(argv, env, message, tmp_path):
    done = run(argv, env, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
