"""``python -m exo_rk.run`` (what ``make run`` runs): bridge + gateway, ready once warm, a curl line that works,
clean stop on SIGTERM."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.request

from tests.support import ServerProcess, wait_for


def test_run_prints_a_working_curl_line_and_stops_both_processes(tmp_path):
    # sim runtime: same wiring as `make run`, without the host model's load time.
    argv = [sys.executable, "-m", "exo_rk.run", "--runtime", "sim"]
    run = ServerProcess(
        argv, env={"EXO_HOME": str(tmp_path / "exo-home"), "RKLLM_SERVERS": ""}, startup_timeout=120
    )
    with run:
        line = wait_for(lambda: re.search(r"^\s*(curl .*)$", run.log_tail(200), re.M), what="the curl line")
        log = run.log_tail(200)
        bridge_url = re.search(r"bridge ready at (\S+)", log).group(1)
        assert "warmed up in" in log  # ready only once the model has produced a first token
        assert f":{run.port}/" in line.group(1)
        out = subprocess.run(
            shlex.split(line.group(1)), capture_output=True, text=True, timeout=60, check=True
        )
        reply = json.loads(out.stdout)
        assert reply["choices"][0]["message"]["content"]
        run.proc.send_signal(signal.SIGTERM)  # as systemd or Kubernetes stop it
        assert run.proc.wait(timeout=30) == 0
    assert "stopped bridge and gateway" in run.log_tail()
    assert "Traceback" not in run.log_tail(400)

    def bridge_gone():
        try:
            urllib.request.urlopen(bridge_url + "/health", timeout=1)
        except OSError:
            return True
        return False

    wait_for(bridge_gone, timeout=20, what="the bridge to stop")
