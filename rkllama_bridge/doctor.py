"""``rkllama-bridge doctor``: what this machine offers the rkllm runtime, and what will go wrong.

Reports the board (device-tree compatible string), the NPU driver version, librkllmrt (path, RKLLM
release, ABI, whether it loads), CPU cores and memory, the governors and frequencies of the CPU clusters,
the NPU and the DDR (and which of them hold decode back), and checks every ``.rkllm`` model of a model
store against the runtime release before anything is loaded. Off a board it says so and exits 0;
on a board it exits 1 when a check failed (``--strict`` makes that apply everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import freq
from .freq import compatible_entries, mhz, soc_of
from .freq import read_sysfs as _read

OK, INFO, WARN, ERROR = "ok", "info", "warn", "error"

LLM_SOCS = ("rk3588s", "rk3588", "rk3576")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class Report:
    board: str | None = None
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, **data: object) -> Check:
        check = Check(name, status, detail, dict(data))
        self.checks.append(check)
        return check

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)


def check_board(root: Path, report: Report) -> None:
    entries = compatible_entries(root)
    machine = platform.machine()
    if entries is None:
        report.add("board", INFO, f"none detected (no /proc/device-tree): this {machine} machine is not a "
                   "Rockchip board, so the rkllm runtime cannot run here (use --runtime host or sim)")
        return
    model = (_read(root, "/proc/device-tree/model") or "").strip("\0 \n")
    soc = soc_of(entries)
    if soc is None:
        report.add("board", INFO, f"{model or 'unknown'} ({', '.join(entries)}): not a Rockchip board; "
                   "the rkllm runtime cannot run here", compatible=entries)
        return
    report.board = soc.upper()
    status = OK if soc in LLM_SOCS else WARN
    note = "" if status == OK else ": RKLLM supports RK3588 and RK3576 only"
    report.add("board", status, f"{model or 'Rockchip board'} ({soc.upper()}){note}", soc=soc, compatible=entries)


def _driver_version(root: Path) -> tuple | None:
    for path in ("/sys/kernel/debug/rknpu/version", "/sys/module/rknpu/version"):
        text = _read(root, path)
        if text:
            m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
            if m:
                return tuple(int(x) for x in m.groups()), path
    return None


def check_npu_driver(root: Path, report: Report, runtime_version: str | None) -> None:
    found = _driver_version(root)
    on_board = report.board is not None
    if found is None:
        report.add("NPU driver", ERROR if on_board else INFO,
                   "no RKNPU driver version found (/sys/kernel/debug/rknpu/version needs root; "
                   "/sys/module/rknpu/version)")
        return
    version, path = found
    text = ".".join(map(str, version))
    needed = (0, 9, 8) if runtime_version and runtime_version.startswith("1.3") else (0, 9, 7)
    if version < needed:
        report.add("NPU driver", WARN, f"RKNPU {text} (from {path}); librkllmrt asks for >= "
                   f"{'.'.join(map(str, needed))}: older drivers fail to allocate or hang", version=text)
    else:
        report.add("NPU driver", OK, f"RKNPU {text} (from {path})", version=text)


def check_library(report: Report, lib_path: str | None, abi: str | None):
    from .rkllm.library import RKLLMLibrary
    from .runtimes.base import RuntimeUnavailable

    on_board = report.board is not None
    try:
        lib = RKLLMLibrary(lib_path, abi)
    except RuntimeUnavailable as exc:
        report.add("librkllmrt", ERROR if on_board else INFO, str(exc))
        return None
    info = lib.describe()
    stub = ", test stub" if lib.is_stub else ""
    what = f"{lib.path}: RKLLM {lib.version or '?'}, ABI {lib.abi.name} ({lib.abi_source}{stub})"
    try:
        lib.load()
    except RuntimeUnavailable as exc:
        foreign = lib.scan.elf_machine and lib.scan.elf_machine != platform.machine()
        report.add("librkllmrt", INFO if foreign and not on_board else ERROR, f"{what}; {exc}", **info)
        return lib
    report.add("librkllmrt", OK, f"{what}; loads, symbols and defaults match the ABI", **info)
    return lib


def check_cpu_memory(root: Path, report: Report) -> None:
    cpu_dir = root / "sys/devices/system/cpu"
    listed = [d for d in cpu_dir.glob("cpu[0-9]*") if d.name[3:].isdigit()] if cpu_dir.is_dir() else []
    cores = len(listed) or os.cpu_count() or 0
    freqs = []
    for cpu in range(cores):
        text = _read(root, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        if text and text.strip().isdigit():
            freqs.append(int(text) // 1000)
    clusters = ""
    if freqs:
        by_freq: dict[int, int] = {}
        for f in freqs:
            by_freq[f] = by_freq.get(f, 0) + 1
        clusters = " (" + ", ".join(f"{n}x {f} MHz" for f, n in sorted(by_freq.items(), reverse=True)) + ")"
    report.add("CPU", OK, f"{cores} cores{clusters}, {platform.machine()}", cores=cores, max_mhz=freqs)
    meminfo = _read(root, "/proc/meminfo") or ""
    values = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.MULTILINE)}
    total, avail = values.get("MemTotal"), values.get("MemAvailable")
    if total is None:
        report.add("memory", WARN, "unknown (/proc/meminfo unreadable)")
        return
    gib = 1 << 20
    detail = f"{total / gib:.1f} GiB total, {(avail or 0) / gib:.1f} GiB available"
    report.add("memory", OK, detail, total_kib=total, available_kib=avail)


CLOCK_EFFECT = {
    "ddr": "DDR bandwidth is the main decode limiter (each token reads every weight from memory)",
    "npu": "decode is memory/NPU bound, expect up to ~2x with performance",
    "cpu": "the runtime's threads run on these cores (sampling, NPU job submission): a low clock adds to "
           "every token",
}


def _clock_detail(clock: freq.Clock) -> str:
    cap = f", capped at {mhz(clock.max_hz)} MHz by {clock.directory}/" + (
        "scaling_max_freq" if clock.kind == "cpu" else "max_freq") if clock.capped else ""
    return f"{clock.describe()}{cap}"


def check_clocks(root: Path, report: Report) -> None:
    """Governors and frequencies of the CPU clusters, the NPU and the DDR; which of them hold decode back."""
    clocks = freq.read_clocks(root, (report.board or "").lower() or None)
    on_board = report.board is not None
    if not clocks.all:
        report.add("clocks", WARN if on_board else INFO, "no cpufreq or devfreq under /sys: the CPU, NPU and DDR "
                   "clocks cannot be read (a container without the host's /sys?)")
        return
    for clock in clocks.all:
        data = clock.as_dict()
        if clock.throttled:
            report.add(clock.name, WARN if on_board else INFO, f"{clock.governor}, yet at {mhz(clock.cur_hz)} MHz "
                       f"of {mhz(clock.top_hz)} MHz: held below max by something else (thermal throttling? see "
                       "/sys/class/thermal/thermal_zone*/temp)", **data)
        elif clock.pinned:
            report.add(clock.name, OK, f"{clock.governor}, {mhz(clock.cur_hz)} MHz of {mhz(clock.top_hz)} MHz: "
                       "pinned at max", **data)
        elif not on_board:
            report.add(clock.name, INFO, _clock_detail(clock), **data)
        elif clocks.is_little(clock):
            report.add(clock.name, INFO, f"{_clock_detail(clock)} (little cores: the rkllm runtime's threads "
                       "run on the big ones)", **data)
        else:
            report.add(clock.name, WARN, f"{_clock_detail(clock)}: {CLOCK_EFFECT[clock.kind]}", **data)
    if not on_board:
        return
    if clocks.npu is None:
        where = f"{freq.DEVFREQ}/{clocks.npu_expected or '*.npu'}"
        report.add("NPU", WARN, f"no devfreq device at {where}: the NPU clock cannot be read or pinned (the "
                   "vendor kernel's rknpu driver exposes it)")
    if clocks.ddr is None:
        report.add("DDR", WARN, f"no devfreq device at {freq.DEVFREQ}/{freq.DDR_DEVFREQ}: the DDR clock, the main "
                   "decode limiter, cannot be read or pinned")
    held = freq.limiters(clocks)
    if held:
        names = ", ".join(f"{c.name.split(' (')[0]} ({mhz(c.cur_hz)} of {mhz(c.top_hz)} MHz)" for c in held)
        fix = ("`sudo rkllama-bridge tune --performance` pins them (`--dry-run` lists the writes first)"
               if any(not c.pinned for c in held) else "pinned, yet below max: cool the board (thermal throttling?)")
        report.add("decode speed", WARN, f"held back by {names}: {fix}", limiters=[c.name for c in held])
    else:
        report.add("decode speed", OK, "every clock found is pinned at its highest frequency: nothing here holds "
                   "decode back", limiters=[])


def read_modelfile(path: Path) -> dict[str, str]:
    """``KEY="value"`` lines of an rkllama Modelfile (keys upper-cased; comments and blanks skipped)."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip().upper()] = value.strip().strip('"').strip("'")
    return out


def check_models(models: Path, report: Report, runtime_version: str | None) -> None:
    from .rkllm.model_file import inspect_model, version_mismatch

    if not models.is_dir():
        report.add("models", ERROR, f"{models} is not a directory")
        return
    found = 0
    for modelfile in sorted(models.glob("*/Modelfile")):
        name = modelfile.parent.name
        try:
            options = read_modelfile(modelfile)
        except OSError as exc:
            report.add(f"model {name}", ERROR, f"cannot read {modelfile}: {exc}")
            continue
        source = options.get("FROM", "")
        if not source.endswith(".rkllm"):
            report.add(f"model {name}", INFO, f"FROM={source or '(none)'} is not an .rkllm model (host runtime)")
            continue
        found += 1
        info = inspect_model(modelfile.parent / source, [options.get("HUGGINGFACE_PATH", ""), name])
        data = {"path": str(info.path), "size": info.size, "toolkit_version": info.toolkit_version,
                "version_source": info.version_source}
        if info.problem:
            report.add(f"model {name}", ERROR, f"{source}: {info.problem}", **data)
            continue
        converted = (f"converted by rkllm-toolkit {info.toolkit_version} (from the {info.version_source})"
                     if info.toolkit_version else "toolkit version not recorded in the header or name")
        mismatch = version_mismatch(info.toolkit_version, runtime_version)
        if mismatch:
            status = ERROR if info.version_source == "header" else WARN
            report.add(f"model {name}", status, f"{source}: {mismatch}: expect load errors or gibberish; "
                       "convert it again or install the matching librkllmrt", **data)
        else:
            report.add(f"model {name}", OK, f"{source} ({info.size / (1 << 20):.0f} MiB), {converted}", **data)
    if found == 0:
        report.add("models", INFO, f"no .rkllm models under {models}")


def run_checks(root: Path, lib_path: str | None, abi: str | None, models: Path | None) -> Report:
    report = Report()
    check_board(root, report)
    lib = check_library(report, lib_path, abi)
    version = lib.version if lib is not None else None
    check_npu_driver(root, report, version)
    # Show the driver right after the board, though it is checked after the library (it needs its version).
    report.checks.insert(1, report.checks.pop())
    check_cpu_memory(root, report)
    check_clocks(root, report)
    if models is not None:
        check_models(models, report, version)
    return report


def summary(report: Report) -> str:
    problems = f"{report.count(ERROR)} error(s), {report.count(WARN)} warning(s)"
    if report.board is None:
        return f"summary: no Rockchip board on this machine; the rkllm runtime will not run here ({problems})"
    return f"summary: {report.board} board; {problems}"


def render(report: Report) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = ["rkllama-bridge doctor"]
    for c in report.checks:
        lines.append(f"  {c.name:<{width}}  {c.status.upper():<5}  {c.detail}")
    lines.append(summary(report))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rkllama-bridge doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="model store to check (DIR/<name>/Modelfile)")
    parser.add_argument("--lib", default=None, help="librkllmrt to inspect (default: $RKLLM_LIB, then /usr/lib)")
    parser.add_argument("--abi", default=None, help="force an RKLLM ABI (default: $RKLLM_ABI, then detected)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any error, even off a board")
    parser.add_argument("--sysfs-root", "--root", dest="root", type=Path, default=Path("/"),
                        help="read /proc and /sys under this directory instead (a copy or a fake tree)")
    args = parser.parse_args(argv)
    report = run_checks(args.root, args.lib, args.abi, args.models)
    if args.json:
        print(json.dumps({"board": report.board, "checks": [asdict(c) for c in report.checks],
                          "summary": summary(report)}, indent=2))
    else:
        print(render(report))
    failed = report.count(ERROR) > 0
    return 1 if failed and (report.board is not None or args.strict) else 0


if __name__ == "__main__":
    raise SystemExit(main())
