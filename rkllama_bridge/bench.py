"""``rkllama-bridge bench --model NAME``: TTFT, prefill and decode speed of one model on this machine.

The model is loaded from the same model store, runtime and settings as ``rkllama-bridge serve`` (every
``serve`` flag and ``RKLLAMA_BRIDGE_*`` variable applies), then driven through its runtime handle with a
prompt of a fixed number of token ids. The result is a markdown block to paste into a bug report or a
discussion: the numbers, the runtime, the board and the CPU/NPU/DDR clocks it ran under (as ``doctor``
reads them), with doctor's verdict on what holds decode back.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

from . import __version__, doctor, freq
from .config import PROGRAM
from .errors import BridgeError
from .runtimes.base import GenerationParams, ModelHandle, RuntimeError_

PROMPT_TEXT = ("The Rockchip RK3588 pairs four Cortex-A76 and four Cortex-A55 cores with a three-core NPU; "
               "a language model running on it reads every weight from DDR memory for each token. ")


@dataclass
class Run:
    prompt_tokens: int
    generated: int
    ttft_ms: float
    prefill_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    finish_reason: str


def prompt_ids(tokenizer, n: int) -> List[int]:
    """Exactly ``n`` token ids of plain English text (repeated until long enough)."""
    ids: List[int] = []
    while len(ids) < n:
        ids.extend(tokenizer.encode(PROMPT_TEXT))
    return ids[:n]


def run_once(handle: ModelHandle, prompt: Sequence[int], new_tokens: int) -> Run:
    stamps: List[float] = []
    started = time.perf_counter()
    result = handle.generate(list(prompt), GenerationParams(max_new_tokens=new_tokens, seed=0),
                             lambda _id: stamps.append(time.perf_counter()))
    if not stamps:
        raise RuntimeError_(f"the model produced no token (finish {result.finish_reason!r})")
    ttft = stamps[0] - started
    # The runtime's own prefill time when it measures one (RKLLM's perf counters, the sim), else the TTFT.
    prefill = result.runtime_prefill_ms / 1000 if result.runtime_prefill_ms else ttft
    decode = stamps[-1] - stamps[0]
    return Run(result.prompt_tokens, len(stamps), ttft * 1000, prefill * 1000,
               result.prompt_tokens / max(prefill, 1e-9), (len(stamps) - 1) / max(decode, 1e-9),
               result.finish_reason)


def _median(runs: List[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def _num(value: float) -> str:
    return f"{value:.1f}" if 10 <= value < 1e5 else f"{value:.3g}"


def board_report(root: Path) -> doctor.Report:
    """doctor's board and clock checks of the system under ``root``."""
    report = doctor.Report()
    doctor.check_board(root, report)
    doctor.check_clocks(root, report)
    return report


def board_line(report: doctor.Report) -> str:
    return report.checks[0].detail if report.board else f"none ({platform.machine()}, not a Rockchip board)"


def clocks_section(root: Path, report: doctor.Report) -> tuple[str, list]:
    """The clocks table and doctor's decode-speed verdict (from ``report``), and the clocks as data."""
    clocks = freq.read_clocks(root, (report.board or "").lower() or None)
    if not clocks.all:
        return "Clocks: none readable (no cpufreq or devfreq under /sys).", []
    lines = ["| clock | governor | current MHz | min–max MHz | highest MHz | pinned at max |",
             "|---|---|---|---|---|---|"]
    for c in clocks.all:
        lines.append(f"| {c.name} | {c.governor or '?'} | {freq.mhz(c.cur_hz)} | {freq.mhz(c.min_hz)}–"
                     f"{freq.mhz(c.max_hz)} | {freq.mhz(c.top_hz)} | {'yes' if c.pinned else 'no'} |")
    verdict = next((c for c in report.checks if c.name == "decode speed"), None)
    if verdict is not None:
        lines += ["", f"doctor, decode speed: {verdict.status.upper()} {verdict.detail}"]
    return "\n".join(lines), [c.as_dict() for c in clocks.all]


def render(model: str, runtime: str, board: str, runs: List[Run], load_s: float, new_tokens: int,
           clocks: str) -> str:
    header = ("| model | prompt tokens | new tokens asked | generated | TTFT ms | prefill tok/s | decode tok/s "
              "| load s |")
    row = (f"| {model} | {runs[0].prompt_tokens} | {new_tokens} | {min(r.generated for r in runs)} | "
           f"{_num(_median(runs, 'ttft_ms'))} | {_num(_median(runs, 'prefill_tok_s'))} | "
           f"{_num(_median(runs, 'decode_tok_s'))} | {load_s:.2f} |")
    short = [r for r in runs if r.generated < new_tokens]
    note = (f" {len(short)} run(s) ended early ({short[0].finish_reason}) after {short[0].generated} tokens."
            if short else "")
    return "\n".join([
        f"### rkllama-bridge bench: {model}", "",
        f"- runtime: {runtime}",
        f"- board: {board}",
        f"- rkllama-bridge {__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        header, "|---|---|---|---|---|---|---|---|", row, "",
        f"Median of {len(runs)} run(s) after a warm-up. TTFT: from the call to the first token; prefill tok/s: "
        "prompt tokens / prefill time (the runtime's own measure when it has one); decode tok/s: tokens after "
        f"the first / time after the first.{note}", "",
        clocks, ""])


def main(argv: Sequence[str] | None = None) -> int:
    from rk_common.settings import SettingsError, cli_error

    from .server import build_service

    parser = argparse.ArgumentParser(prog="rkllama-bridge bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", dest="bench_model", required=True, help="the model to measure (a store name)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens to generate per run (default 128)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs, after one warm-up (default 3)")
    parser.add_argument("--json", dest="json_file", type=Path, default=None, metavar="FILE",
                        help="also write the numbers and clocks as JSON to FILE")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/"), metavar="DIR",
                        help="read the clocks under DIR instead of / (a copy or a fake tree)")
    PROGRAM.add_arguments(parser)
    args = parser.parse_args(argv)
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--new-tokens", args.new_tokens),
                        ("--runs", args.runs)):
        if value < 1:
            parser.error(f"{flag} must be at least 1")
    try:
        config = PROGRAM.load(args)
    except SettingsError as exc:
        return cli_error("rkllama-bridge bench", exc)
    service = build_service(config)
    try:
        stored = service.store.get(args.bench_model)
        spec = service.model_spec(stored)
        prompt = prompt_ids(stored.tokenizer, min(args.prompt_tokens, max(1, spec.num_ctx - args.new_tokens)))
        started = time.perf_counter()
        handle = service.runtime.load(spec)
        load_s = time.perf_counter() - started
    except (BridgeError, RuntimeError_) as exc:
        print(f"rkllama-bridge bench: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    try:
        run_once(handle, prompt, min(8, args.new_tokens))  # warm-up: first-run allocations, caches
        runs = [run_once(handle, prompt, args.new_tokens) for _ in range(args.runs)]
    except RuntimeError_ as exc:
        print(f"rkllama-bridge bench: {args.bench_model}: {exc}", file=sys.stderr)
        return 1
    finally:
        handle.close()
        service.close()
    label = str(service.runtime.describe().get("label") or config.runtime)
    report = board_report(args.sysfs_root)
    clocks_md, clocks = clocks_section(args.sysfs_root, report)
    board = board_line(report)
    print(render(args.bench_model, f"{config.runtime}: {label}", board, runs, load_s, args.new_tokens, clocks_md))
    if args.json_file:
        args.json_file.write_text(json.dumps({
            "model": args.bench_model, "runtime": config.runtime, "runtime_label": label,
            "board": board, "new_tokens": args.new_tokens, "load_s": load_s,
            "runs": [asdict(r) for r in runs],
            "median": {f: _median(runs, f) for f in ("ttft_ms", "prefill_tok_s", "decode_tok_s")},
            "clocks": clocks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
