"""``rkllama-bridge bench`` against the sim runtime (instant profile), with the clocks of a fake RK3588."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from ..conftest import SIM_MODEL
from ..support import REPO
from .sysfs import build_board


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rkllama_bridge", "bench", *args], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))


def table_rows(markdown: str, header_start: str) -> list:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_reports_speeds_and_clocks_as_markdown(sim_models_dir, tmp_path):
    root = build_board(tmp_path / "root", "rk3588")
    numbers = tmp_path / "bench.json"
    proc = bench("--model", SIM_MODEL, "--runtime", "sim", "--sim-profile", "instant", "--models",
                 str(sim_models_dir), "--prompt-tokens", "48", "--new-tokens", "20", "--runs", "2",
                 "--sysfs-root", str(root), "--json", str(numbers))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"### rkllama-bridge bench: {SIM_MODEL}\n")
    assert "- runtime: sim: simulated RK3588 (instant" in out and "- board: Radxa ROCK 5B (RK3588)" in out

    [row] = table_rows(out, "| model |")
    model, prompt, asked, generated, ttft, prefill, decode, load = row
    assert (model, prompt, asked, generated) == (SIM_MODEL, "48", "20", "20")
    assert all(float(v) > 0 for v in (ttft, prefill, decode)) and float(load) >= 0
    assert "Median of 2 run(s)" in out and "ended early" not in out

    data = json.loads(numbers.read_text())
    assert [(r["prompt_tokens"], r["generated"], r["finish_reason"]) for r in data["runs"]] == [(48, 20, "length")] * 2
    for run in data["runs"]:
        assert run["ttft_ms"] > 0 and run["prefill_ms"] > 0 and run["decode_tok_s"] > 0
        assert abs(run["prefill_tok_s"] - 48 / (run["prefill_ms"] / 1000)) < 1e-6 * run["prefill_tok_s"]
    median = data["median"]
    assert min(r["decode_tok_s"] for r in data["runs"]) <= median["decode_tok_s"] <= \
        max(r["decode_tok_s"] for r in data["runs"])

    clocks = table_rows(out, "| clock |")
    assert [r[0] for r in clocks] == ["CPU policy0 (A55, cpus 0-3)", "CPU policy4 (A76, cpus 4-5)",
                                      "CPU policy6 (A76, cpus 6-7)", "NPU", "DDR"]
    assert clocks[3][1:] == ["rknpu_ondemand", "300", "300–1000", "1000", "no"]
    assert [c["governor"] for c in data["clocks"]] == [r[1] for r in clocks]
    assert re.search(r"doctor, decode speed: WARN held back by DDR \(528 of 2112 MHz\), NPU", out)


def test_bench_of_an_unknown_model_says_which_exist(sim_models_dir):
    proc = bench("--model", "nope", "--runtime", "sim", "--models", str(sim_models_dir))
    assert proc.returncode == 1
    assert "model 'nope' not found" in proc.stderr and SIM_MODEL in proc.stderr and "Traceback" not in proc.stderr
