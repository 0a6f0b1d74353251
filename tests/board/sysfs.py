"""Fake /proc and /sys trees of RK3588 and RK3576 boards, laid out as their vendor kernels lay them out.

Frequencies are those the kernels list (cpufreq in kHz, devfreq in Hz); governors start at the kernels'
power-saving defaults unless ``pinned``. A real kernel moves ``cur_freq`` when the governor changes; a fake
tree is plain files, so the tests read back what was written instead.
"""

from __future__ import annotations

from pathlib import Path

CPU_GOVERNORS = "conservative ondemand userspace powersave performance schedutil"
NPU_GOVERNORS = "rknpu_ondemand userspace powersave performance simple_ondemand"
DDR_GOVERNORS = "dmc_ondemand userspace powersave performance simple_ondemand"
DDR_HZ = [528000000, 1068000000, 1560000000, 2112000000]
NPU_HZ = [300000000, 400000000, 500000000, 600000000, 700000000, 800000000, 900000000, 1000000000]

BOARDS = {
    "rk3588": {"compatible": b"radxa,rock-5b\0rockchip,rk3588\0", "model": b"Radxa ROCK 5B\0", "npu": "fdab0000.npu",
               "policies": {0: ([0, 1, 2, 3], [408000, 816000, 1200000, 1416000, 1608000, 1800000]),
                            4: ([4, 5], [408000, 1200000, 1800000, 2016000, 2208000, 2352000]),
                            6: ([6, 7], [408000, 1200000, 1800000, 2016000, 2208000, 2352000])}},
    "rk3576": {"compatible": b"armsom,sige5\0rockchip,rk3576\0", "model": b"ArmSoM Sige5\0", "npu": "27700000.npu",
               "policies": {0: ([0, 1, 2, 3], [408000, 1008000, 1416000, 1800000, 2016000, 2208000]),
                            4: ([4, 5, 6, 7], [408000, 1008000, 1416000, 1800000, 2016000, 2304000])}},
}


def _files(directory: Path, values: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")


def build_board(root: Path, soc: str = "rk3588", pinned: bool = False, npu: bool = True) -> Path:
    """A board's /proc/device-tree and its cpufreq and devfreq directories under ``root``."""
    board = BOARDS[soc]
    dt = root / "proc" / "device-tree"
    dt.mkdir(parents=True, exist_ok=True)
    (dt / "compatible").write_bytes(board["compatible"])
    (dt / "model").write_bytes(board["model"])
    _files(root / "proc", {"meminfo": "MemTotal:       16166432 kB\nMemAvailable:   14873244 kB"})
    _files(root / "sys/kernel/debug/rknpu", {"version": "RKNPU driver: v0.9.8"})
    for first, (cpus, khz) in board["policies"].items():
        for cpu in cpus:
            _files(root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq", {"cpuinfo_max_freq": khz[-1]})
        _files(root / f"sys/devices/system/cpu/cpufreq/policy{first}", {
            "scaling_governor": "performance" if pinned else "schedutil",
            "scaling_available_governors": CPU_GOVERNORS,
            "scaling_available_frequencies": " ".join(map(str, khz)),
            "scaling_cur_freq": khz[-1] if pinned else khz[0], "scaling_min_freq": khz[0],
            "scaling_max_freq": khz[-1], "cpuinfo_max_freq": khz[-1], "cpuinfo_min_freq": khz[0],
            "related_cpus": " ".join(map(str, cpus)), "affected_cpus": " ".join(map(str, cpus)),
            "scaling_setspeed": "<unsupported>"})
    devices = [("dmc", DDR_HZ, DDR_GOVERNORS, "dmc_ondemand")]
    if npu:
        devices.append((board["npu"], NPU_HZ, NPU_GOVERNORS, "rknpu_ondemand"))
    for name, hz, governors, default in devices:
        _files(root / f"sys/class/devfreq/{name}", {
            "governor": "performance" if pinned else default, "available_governors": governors,
            "available_frequencies": " ".join(map(str, hz)), "cur_freq": hz[-1] if pinned else hz[0],
            "min_freq": hz[0], "max_freq": hz[-1], "target_freq": hz[-1] if pinned else hz[0],
            "userspace/set_freq": "unsupported"})
    return root


def snapshot(root: Path) -> dict:
    """Every file of the tree's /sys and its text: compare a tree before and after."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted((root / "sys").rglob("*")) if p.is_file()}
