"""What ``make run`` runs: a bridge serving the embedded default model on the host runtime, and the
OpenAI-compatible gateway on 127.0.0.1:52415 (exo's port) in front of it, until Ctrl-C.

``python -m exo_rk.run [--port 52415] [--runtime host|sim]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from exo_rk.cli import serve
from exo_rk.model_cards import DEFAULT_MODEL_ID
from exo_rk.settings import Settings
from rk_common.settings import SettingsError, cli_error

log = logging.getLogger("exo_rk.run")


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
        self.proc = subprocess.Popen(self.argv)
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

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
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
    try:
        base = Settings.from_env()
    except SettingsError as exc:
        return cli_error("exo_rk.run", exc)
    port = base.port if args.port is None else args.port
    with tempfile.TemporaryDirectory(prefix="exo-rk-run-") as tmp:
        bridge = BridgeProcess(args.runtime, Path(tmp))
        try:
            url = bridge.start()
            print(f"bridge ready at {url} ({args.runtime} runtime, model {DEFAULT_MODEL_ID})", flush=True)
            settings = base.with_(servers=(url,))

            def ready(port: int) -> None:
                print(
                    f"\ngateway ready on http://127.0.0.1:{port} — try:\n\n  {curl_line(port)}\n\n"
                    f"Ctrl-C stops both.",
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


if __name__ == "__main__":
    sys.exit(main())
