"""Helpers shared by the test suites: real server processes on ephemeral loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except AssertionError:
            raise  # the condition can never hold (e.g. the server exited): fail now
        except Exception as exc:  # noqa: BLE001 - the condition may fail until it holds
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc!r})" if last_exc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


class ServerProcess:
    """A server started as a real subprocess that reports its bound port through ``--port-file``.

    ``argv`` is the command without ``--port``/``--port-file``; those are appended. Output goes to a
    log file whose tail is shown when start-up fails.
    """

    def __init__(self, argv: Sequence[str], env: Optional[dict] = None, startup_timeout: float = 120.0,
                 health_path: str = "/health", token: Optional[str] = None):
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.startup_timeout = startup_timeout
        self.health_path = health_path
        self.token = token
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self._tmp = tempfile.TemporaryDirectory(prefix="exo-rk-test-")
        self.log_path = Path(self._tmp.name) / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        port_file = Path(self._tmp.name) / "port"
        if port_file.exists():
            port_file.unlink()
        argv = self.argv + ["--port", "0", "--port-file", str(port_file)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if not port_file.exists() or not port_file.read_text().strip():
                return False
            self.port = int(port_file.read_text().strip())
            return self.get_json(self.health_path)[0] == 200

        try:
            wait_for(ready, timeout=self.startup_timeout, interval=0.05, what=f"{argv[:4]} to serve")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- server log ---\n{self.log_tail()}") from None
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def headers(self, extra: Optional[dict] = None) -> dict:
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra or {})
        return h

    def request(self, method: str, path: str, body=None, headers: Optional[dict] = None, timeout: float = 60.0):
        """Send one request; returns (status, headers, raw bytes). Never raises on an HTTP status."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers(headers))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get_json(self, path: str, **kw):
        status, _, raw = self.request("GET", path, **kw)
        return status, (json.loads(raw) if raw else None)

    def post_json(self, path: str, body, **kw):
        status, _, raw = self.request("POST", path, body, **kw)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def refuses_connections(self) -> bool:
        """True once the listening socket is closed (a stopping server); an HTTP answer of any status is False."""
        try:
            urllib.request.urlopen(self.url + "/health", timeout=2)
        except urllib.error.HTTPError:
            return False
        except OSError:
            return True
        return False


def bridge_argv(models_dir: Path | str, runtime: str = "sim", *extra: str) -> list:
    """The command line of a bridge process serving ``models_dir`` with ``runtime``."""
    return [sys.executable, "-m", "rkllama_bridge", "serve", "--models", str(models_dir), "--runtime", runtime,
            "--host", "127.0.0.1", *extra]
