"""What ``make run`` runs: a bridge serving the embedded default model on the host runtime, and the
OpenAI-compatible gateway on 127.0.0.1:52415 (exo's port) in front of it, until Ctrl-C or SIGTERM (both stop
the gateway, then the bridge, gracefully). "ready" is announced once the model is loaded and has produced a
first token, so the first request pays no load.

``python -m exo_rk.run [--port 52415] [--runtime host|sim]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Optional, Sequence

from exo_rk.cli import serve
from exo_rk.model_cards import DEFAULT_MODEL_ID
from exo_rk.settings import Settings
from rk_common.settings import SettingsError, cli_error

log = logging.getLogger("exo_rk.run")

# Libraries' deprecation and advisory chatter (torch, transformers) kept off the user's console; our own
# messages go through logging and are untouched.
QUIET_ENV = {"PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning",
             "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
BRIDGE_MODEL = "smollm2-135m-instruct"  # the embedded default model's name in the bridge's store


def quiet_libraries() -> None:
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


class BridgeProcess:
    """``python -m rkllama_bridge serve`` as a child process on a free loopback port."""

    def __init__(self, runtime: str, workdir: Path):
        self.port_file = workdir / "bridge.port"
        self.argv = [
            sys.executable,
            "-m",
            "rkllama_bridge",
            "serve",
            "--runtime",
            runtime,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
        ]
        self.proc: Optional[subprocess.Popen] = None
        self.url: Optional[str] = None

    def start(self, timeout: float = 600.0) -> str:
        """Start and wait until ``/health`` answers; shows progress (the first start converts the model)."""
        # A session of its own: a terminal's Ctrl-C reaches this process only, which stops the bridge with
        # one SIGTERM after the gateway (a second signal would make the bridge exit at once).
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **QUIET_ENV}, start_new_session=True)
        deadline, last_note = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the bridge exited with status {self.proc.returncode} (see its log above)"
                )
            if self._healthy():
                return self.url
            if time.monotonic() - last_note > 10:
                print(
                    "… waiting for the bridge (its first start converts the default model, ~30 s)", flush=True
                )
                last_note = time.monotonic()
            time.sleep(0.2)
        raise RuntimeError(f"the bridge did not become healthy within {timeout:.0f} s")

    def _healthy(self) -> bool:
        text = self.port_file.read_text().strip() if self.port_file.exists() else ""
        if not text:
            return False
        self.url = f"http://127.0.0.1:{int(text)}"
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200 and json.loads(resp.read()).get("status") == "ok"
        except OSError:
            return False

    def warm_up(self, timeout: float = 600.0) -> None:
        """Load the default model and generate one token, so that "ready" means ready."""
        body = json.dumps({"model": BRIDGE_MODEL, "messages": [{"role": "user", "content": "Hi"}],
                           "max_tokens": 1, "stream": False}).encode()
        request = urllib.request.Request(self.url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            reply = json.loads(resp.read())
        if not reply.get("usage", {}).get("completion_tokens"):
            raise RuntimeError(f"the bridge's warm-up produced no token: {str(reply)[:200]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def curl_line(port: int) -> str:
    body = json.dumps(
        {
            "model": DEFAULT_MODEL_ID,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 48,
        }
    )
    return (
        f"curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exo_rk.run", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="gateway port (default $EXO_RK_PORT or 52415)")
    parser.add_argument("--runtime", default="host", choices=("host", "sim"))
    parser.add_argument("--port-file", type=Path, help="write the gateway's port here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    signal.signal(signal.SIGTERM, _interrupt)  # until the gateway's loop takes over: stop like Ctrl-C
    try:
        base = Settings.from_env()
    except SettingsError as exc:
        return cli_error("exo_rk.run", exc)
    port = base.port if args.port is None else args.port
    with tempfile.TemporaryDirectory(prefix="exo-rk-run-") as tmp:
        bridge = BridgeProcess(args.runtime, Path(tmp))
        try:
            url = bridge.start()
            print(f"bridge up at {url}; loading {DEFAULT_MODEL_ID} and generating a first token…", flush=True)
            started = time.monotonic()
            bridge.warm_up()
            print(f"bridge ready at {url} ({args.runtime} runtime, model {DEFAULT_MODEL_ID}, warmed up in "
                  f"{time.monotonic() - started:.1f} s)", flush=True)
            settings = base.with_(servers=(url,))

            def ready(port: int) -> None:
                print(
                    f"\ngateway ready on http://127.0.0.1:{port} — try:\n\n  {curl_line(port)}\n\n"
                    f"Ctrl-C (or SIGTERM) stops both.",
                    flush=True,
                )

            asyncio.run(
                serve(settings, "127.0.0.1", port, args.port_file, DEFAULT_MODEL_ID, on_ready=ready)
            )
        except KeyboardInterrupt:
            pass
        except (RuntimeError, OSError) as exc:
            print(f"exo_rk.run: {exc}", file=sys.stderr)
            return 1
        finally:
            bridge.stop()
            print("stopped bridge and gateway", flush=True)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
