"""The clocks that decide an RKLLM board's speed: CPU clusters (cpufreq), NPU and DDR (devfreq).

Reads governors and current/min/max frequencies from sysfs (under a root directory, so tests can build a
fake tree), judges whether each clock is pinned at its highest frequency, and plans the writes that pin it
(``rkllama-bridge tune --performance``). Frequencies are kept in Hz (cpufreq files are in kHz).

Paths, as the RK3588 and RK3576 vendor kernels lay them out (and as Rockchip's own frequency scripts
write them):

- CPU: ``/sys/devices/system/cpu/cpufreq/policy<N>/`` — RK3588 policy0 (A55, cpus 0-3), policy4 (A76,
  cpus 4-5), policy6 (A76, cpus 6-7); RK3576 policy0 (A53, cpus 0-3), policy4 (A72, cpus 4-7).
- NPU: ``/sys/class/devfreq/fdab0000.npu`` (RK3588), ``/sys/class/devfreq/27700000.npu`` (RK3576).
- DDR: ``/sys/class/devfreq/dmc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

CPUFREQ = "/sys/devices/system/cpu/cpufreq"
DEVFREQ = "/sys/class/devfreq"
NPU_DEVFREQ = {"rk3588": "fdab0000.npu", "rk3588s": "fdab0000.npu", "rk3576": "27700000.npu"}
DDR_DEVFREQ = "dmc"
#: core type of each cpufreq policy, by SoC (the policy is named after its first cpu)
CORE_TYPES = {"rk3588": {0: "A55", 4: "A76", 6: "A76"}, "rk3588s": {0: "A55", 4: "A76", 6: "A76"},
              "rk3576": {0: "A53", 4: "A72"}}
KNOWN_SOCS = ("rk3588s", "rk3588", "rk3576", "rk3568", "rk3566", "rk3562")
PERFORMANCE, USERSPACE = "performance", "userspace"


def read_sysfs(root: Path, path: str) -> Optional[str]:
    """The text of ``path`` (an absolute system path) under ``root``, or None when it cannot be read."""
    try:
        return (Path(root) / path.lstrip("/")).read_bytes().decode(errors="replace")
    except OSError:
        return None


def compatible_entries(root: Path) -> Optional[List[str]]:
    """The device tree's compatible strings (``radxa,rock-5b``, ``rockchip,rk3588``...); None without one."""
    text = read_sysfs(root, "/proc/device-tree/compatible")
    return None if text is None else [c for c in text.split("\0") if c]


def soc_of(entries: List[str]) -> Optional[str]:
    """The Rockchip SoC that compatible strings name (``rk3588``...), or None."""
    return next((s for s in KNOWN_SOCS for c in entries if c == f"rockchip,{s}"), None)


def detect_soc(root: Path) -> Optional[str]:
    """The Rockchip SoC of the device tree under ``root``, or None."""
    return soc_of(compatible_entries(root) or [])


def _int(text: Optional[str]) -> Optional[int]:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _words(text: Optional[str]) -> List[str]:
    return (text or "").split()


def mhz(hz: Optional[int]) -> str:
    return "?" if hz is None else f"{hz / 1e6:.0f}"


@dataclass
class Clock:
    """One clock domain as sysfs shows it. ``top_hz`` is the highest frequency the hardware offers."""

    kind: str  # "cpu", "npu" or "ddr"
    name: str  # what a user reads: "CPU policy4 (A76, cpus 4-5)", "NPU", "DDR"
    directory: str  # absolute system path of the domain's sysfs directory
    governor: Optional[str]
    governors: List[str]
    cur_hz: Optional[int]
    min_hz: Optional[int]
    max_hz: Optional[int]
    top_hz: Optional[int]
    available_hz: List[int] = field(default_factory=list)
    cpus: str = ""

    @property
    def capped(self) -> bool:
        """The allowed maximum is below what the hardware offers."""
        return self.top_hz is not None and self.max_hz is not None and self.max_hz < self.top_hz

    @property
    def pinned(self) -> bool:
        """Held at the highest frequency: performance governor (or userspace / min at the top), not capped."""
        if self.capped or self.top_hz is None:
            return False
        if self.governor == PERFORMANCE:
            return True
        if self.min_hz is not None and self.min_hz >= self.top_hz:
            return True
        return self.governor == USERSPACE and self.cur_hz is not None and self.cur_hz >= self.top_hz

    @property
    def throttled(self) -> bool:
        """Pinned, yet running below its highest frequency (thermal throttling, or a cap set elsewhere)."""
        return self.pinned and self.cur_hz is not None and self.top_hz is not None and self.cur_hz < self.top_hz

    def describe(self) -> str:
        return f"{self.governor or '?'} at {mhz(self.cur_hz)} MHz of {mhz(self.top_hz)} MHz"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "clock": self.name, "path": self.directory, "governor": self.governor,
                "available_governors": self.governors, "cur_hz": self.cur_hz, "min_hz": self.min_hz,
                "max_hz": self.max_hz, "top_hz": self.top_hz, "pinned": self.pinned,
                "throttled": self.throttled}


def _cpu_clock(root: Path, policy: str, soc: Optional[str]) -> Clock:
    d = f"{CPUFREQ}/{policy}"

    def khz(name: str) -> Optional[int]:
        value = _int(read_sysfs(root, f"{d}/{name}"))
        return None if value is None else value * 1000

    available = sorted(int(f) * 1000 for f in _words(read_sysfs(root, f"{d}/scaling_available_frequencies"))
                       if f.isdigit())
    top = khz("cpuinfo_max_freq") or (available[-1] if available else None)
    cpus = " ".join(_words(read_sysfs(root, f"{d}/related_cpus") or read_sysfs(root, f"{d}/affected_cpus")))
    number = int(policy[len("policy"):]) if policy[len("policy"):].isdigit() else -1
    core = CORE_TYPES.get(soc or "", {}).get(number)
    span = cpus.split()
    label = f"cpus {span[0]}-{span[-1]}" if len(span) > 1 else f"cpu {span[0]}" if span else ""
    name = f"CPU {policy} ({', '.join(x for x in (core, label) if x)})" if core or label else f"CPU {policy}"
    return Clock("cpu", name, d, (read_sysfs(root, f"{d}/scaling_governor") or "").strip() or None,
                 _words(read_sysfs(root, f"{d}/scaling_available_governors")), khz("scaling_cur_freq"),
                 khz("scaling_min_freq"), khz("scaling_max_freq"), top, available, cpus)


def _devfreq_clock(root: Path, kind: str, name: str, device: str) -> Clock:
    d = f"{DEVFREQ}/{device}"
    available = sorted(int(f) for f in _words(read_sysfs(root, f"{d}/available_frequencies")) if f.isdigit())
    max_hz = _int(read_sysfs(root, f"{d}/max_freq"))
    return Clock(kind, name, d, (read_sysfs(root, f"{d}/governor") or "").strip() or None,
                 _words(read_sysfs(root, f"{d}/available_governors")), _int(read_sysfs(root, f"{d}/cur_freq")),
                 _int(read_sysfs(root, f"{d}/min_freq")), max_hz, available[-1] if available else max_hz, available)


def npu_device(root: Path, soc: Optional[str]) -> Optional[str]:
    """The NPU's devfreq device: the SoC's known name, else any ``*.npu`` devfreq device."""
    base = Path(root) / DEVFREQ.lstrip("/")
    known = [NPU_DEVFREQ[soc]] if soc in NPU_DEVFREQ else sorted(set(NPU_DEVFREQ.values()))
    for device in known:
        if (base / device).is_dir():
            return device
    found = sorted(p.name for p in base.glob("*.npu")) if base.is_dir() else []
    return found[0] if found else None


@dataclass
class Clocks:
    """Every clock found under a root; ``npu_expected`` names the devfreq device the SoC should have."""

    soc: Optional[str]
    cpus: List[Clock]
    npu: Optional[Clock]
    ddr: Optional[Clock]
    npu_expected: Optional[str]

    @property
    def all(self) -> List[Clock]:
        return [*self.cpus, *(c for c in (self.npu, self.ddr) if c is not None)]

    @property
    def big_top_hz(self) -> int:
        return max((c.top_hz or 0 for c in self.cpus), default=0)

    def is_little(self, clock: Clock) -> bool:
        """A CPU cluster slower than the fastest one: the rkllm runtime's threads run on the big cores."""
        return clock.kind == "cpu" and (clock.top_hz or 0) < self.big_top_hz


def read_clocks(root: Path, soc: Optional[str] = None) -> Clocks:
    root = Path(root)
    soc = soc or detect_soc(root)
    base = root / CPUFREQ.lstrip("/")
    policies = sorted((p.name for p in base.glob("policy*") if p.name[6:].isdigit()), key=lambda n: int(n[6:])) \
        if base.is_dir() else []
    cpus = [_cpu_clock(root, p, soc) for p in policies]
    device = npu_device(root, soc)
    npu = _devfreq_clock(root, "npu", "NPU", device) if device else None
    ddr_dir = root / DEVFREQ.lstrip("/") / DDR_DEVFREQ
    ddr = _devfreq_clock(root, "ddr", "DDR", DDR_DEVFREQ) if ddr_dir.is_dir() else None
    return Clocks(soc, cpus, npu, ddr, NPU_DEVFREQ.get(soc or ""))


@dataclass(frozen=True)
class Write:
    """One sysfs write of a plan. ``old`` is what to restore (None: nothing, e.g. a userspace set-speed
    file, which the restored governor overrides)."""

    path: str
    old: Optional[str]
    new: str
    why: str


def _hz_value(clock: Clock, hz: int) -> str:
    return str(hz // 1000) if clock.kind == "cpu" else str(hz)


def plan_clock(clock: Clock) -> tuple[List[Write], Optional[str]]:
    """The writes that pin ``clock`` at its highest frequency, and a note when it cannot be done."""
    if clock.pinned:
        return [], None
    if clock.top_hz is None:
        return [], "its highest frequency is unknown"
    d = clock.directory
    cpu = clock.kind == "cpu"
    writes: List[Write] = []
    if clock.capped:
        name = "scaling_max_freq" if cpu else "max_freq"
        writes.append(Write(f"{d}/{name}", _hz_value(clock, clock.max_hz or 0), _hz_value(clock, clock.top_hz),
                            f"lift the cap {mhz(clock.max_hz)} → {mhz(clock.top_hz)} MHz"))
    gov_file = f"{d}/scaling_governor" if cpu else f"{d}/governor"
    if PERFORMANCE in clock.governors or (not clock.governors and clock.governor != PERFORMANCE):
        if clock.governor != PERFORMANCE:
            writes.append(Write(gov_file, clock.governor or "", PERFORMANCE, "run at the highest frequency"))
    elif USERSPACE in clock.governors:
        if clock.governor != USERSPACE:
            writes.append(Write(gov_file, clock.governor or "", USERSPACE, "no performance governor: fix the clock"))
        speed = f"{d}/scaling_setspeed" if cpu else f"{d}/userspace/set_freq"
        writes.append(Write(speed, None, _hz_value(clock, clock.top_hz), f"set {mhz(clock.top_hz)} MHz"))
    else:
        return writes, f"no performance or userspace governor (has: {' '.join(clock.governors)})"
    return writes, None


def plan_performance(clocks: Clocks) -> tuple[List[Write], List[str]]:
    """Every write that pins the board's clocks, in order (caps before governors), and notes of what was
    left alone and why."""
    writes: List[Write] = []
    notes: List[str] = []
    for clock in clocks.all:
        planned, note = plan_clock(clock)
        writes.extend(planned)
        if note:
            notes.append(f"{clock.name}: left alone, {note}")
        elif not planned:
            notes.append(f"{clock.name}: already pinned ({clock.describe()})")
    if clocks.npu is None:
        where = f"{DEVFREQ}/{clocks.npu_expected}" if clocks.npu_expected else f"{DEVFREQ}/*.npu"
        notes.append(f"NPU: no devfreq device ({where}): its clock cannot be tuned from here")
    if clocks.ddr is None:
        notes.append(f"DDR: no devfreq device ({DEVFREQ}/{DDR_DEVFREQ}): its clock cannot be tuned from here")
    return writes, notes


def limiters(clocks: Clocks) -> List[Clock]:
    """The clocks holding decode back, most costly first: DDR (bandwidth: every token reads every weight),
    then the NPU, then the big CPU clusters."""
    order: Dict[str, int] = {"ddr": 0, "npu": 1, "cpu": 2}
    held = [c for c in clocks.all if (not c.pinned or c.throttled) and not clocks.is_little(c)]
    return sorted(held, key=lambda c: order[c.kind])
