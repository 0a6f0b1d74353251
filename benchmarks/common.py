"""Shared benchmark helpers: statistics and markdown tables. Benchmarks measure alternatives side by side
in one run and report ratios; absolute numbers depend on the machine."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import requests


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def percentile(xs: Sequence[float], q: float) -> float:
    data = sorted(xs)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def table(header: Sequence[str], rows: List[Sequence]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def start_server(argv: Sequence[str], tmp: Path, name: str, env: Optional[Dict[str, str]] = None,
                 timeout: float = 180.0, ready_path: str = "/health") -> Tuple[subprocess.Popen, str]:
    """Start a server process (``argv`` without port flags) on a free loopback port and wait until its
    ``ready_path`` answers; returns (process, base url). Its output goes to ``tmp/<name>.log``."""
    port_file = tmp / f"{name}.port"
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen([*argv, "--port", "0", "--port-file", str(port_file)], stdout=log, stderr=log,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {tmp / (name + '.log')}")
        if port_file.exists() and port_file.read_text().strip():
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            try:
                if requests.get(url + ready_path, timeout=2).ok:
                    return proc, url
            except requests.ConnectionError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start within {timeout:.0f} s")
