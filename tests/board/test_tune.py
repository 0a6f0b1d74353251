"""``rkllama-bridge doctor`` and ``tune`` on fake RK3588 / RK3576 /sys trees, run as real CLI processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rkllama_bridge import doctor, tune

from ..support import REPO
from .sysfs import build_board, snapshot

NPU_DIR = {"rk3588": "/sys/class/devfreq/fdab0000.npu", "rk3576": "/sys/class/devfreq/27700000.npu"}
POLICIES = {"rk3588": ["policy0", "policy4", "policy6"], "rk3576": ["policy0", "policy4"]}


def cli(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """``python -m rkllama_bridge ARGS``; ``unprivileged`` runs it without root's powers even when the tests
    run as root (root ignores file modes, so neither the root check nor a read-only file would show): in a
    user namespace of its own, where it is uid 65534 with no capability over the files outside."""
    prefix = []
    if unprivileged and os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root, and no `unshare` to run the command without root's powers")
        prefix = ["unshare", "--user"]
    proc = subprocess.run([*prefix, sys.executable, "-m", "rkllama_bridge", *args], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))
    if prefix and proc.returncode != 0 and proc.stderr.startswith("unshare:"):
        pytest.skip(f"running as root, and user namespaces are not allowed here: {proc.stderr.strip()}")
    return proc


def doctor_checks(root: Path) -> dict:
    proc = cli("doctor", "--sysfs-root", str(root), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def raise_clocks_as_the_kernel_does(root: Path) -> None:
    """What a kernel does once a clock's governor is performance: run it at its allowed maximum."""
    for governor in [*root.glob("sys/devices/system/cpu/cpufreq/policy*/scaling_governor"),
                     *root.glob("sys/class/devfreq/*/governor")]:
        if governor.read_text().strip() == "performance":
            cpu = governor.name == "scaling_governor"
            top = (governor.parent / ("scaling_max_freq" if cpu else "max_freq")).read_text()
            (governor.parent / ("scaling_cur_freq" if cpu else "cur_freq")).write_text(top)


@pytest.mark.parametrize("soc", ["rk3588", "rk3576"])
def test_doctor_names_what_holds_decode_back(soc, tmp_path):
    root = build_board(tmp_path / "root", soc)
    checks = doctor_checks(root)
    npu, ddr, verdict = checks["NPU"], checks["DDR"], checks["decode speed"]
    assert npu["status"] == "warn" and npu["data"]["path"] == NPU_DIR[soc]
    assert npu["detail"].startswith("rknpu_ondemand at 300 MHz of 1000 MHz: decode is memory/NPU bound")
    assert ddr["status"] == "warn" and "dmc_ondemand at 528 MHz of 2112 MHz" in ddr["detail"]
    assert "main decode limiter" in ddr["detail"]
    cpus = {name: c for name, c in checks.items() if name.startswith("CPU policy")}
    assert sorted(c["data"]["path"].rsplit("/", 1)[1] for c in cpus.values()) == POLICIES[soc]
    little = next(c for name, c in cpus.items() if name.startswith("CPU policy0"))
    assert little["status"] == "info" and "little cores" in little["detail"]
    assert all(c["status"] == "warn" for name, c in cpus.items() if not name.startswith("CPU policy0"))
    assert verdict["status"] == "warn" and verdict["data"]["limiters"][:2] == ["DDR", "NPU"]
    assert "tune --performance" in verdict["detail"]


def test_dry_run_lists_every_write_and_makes_none(tmp_path):
    root = build_board(tmp_path / "root", "rk3588")
    before = snapshot(root)
    proc = cli("tune", "--performance", "--dry-run", "--sysfs-root", str(root), unprivileged=True)
    assert proc.returncode == 0, proc.stderr
    writes = [line.split()[0].rstrip(":") for line in proc.stdout.splitlines() if "→" in line]
    assert writes == [f"/sys/devices/system/cpu/cpufreq/{p}/scaling_governor" for p in POLICIES["rk3588"]] + \
        [f"{NPU_DIR['rk3588']}/governor", "/sys/class/devfreq/dmc/governor"]
    assert "rknpu_ondemand → performance" in proc.stdout and "dmc_ondemand → performance" in proc.stdout
    assert snapshot(root) == before and not (root / "var").exists()


@pytest.mark.parametrize("soc", ["rk3588", "rk3576"])
def test_performance_pins_every_clock_and_revert_restores_the_tree(soc, tmp_path, capsys):
    root = build_board(tmp_path / "root", soc)
    before = snapshot(root)
    revert_file = tmp_path / "revert.json"
    proc = cli("tune", "--performance", "--sysfs-root", str(root), "--revert-file", str(revert_file))
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(revert_file.read_text())["restore"]
    assert len(saved) == len(POLICIES[soc]) + 2 == proc.stdout.count("  wrote ")
    assert {e["value"] for e in saved} == {"schedutil", "rknpu_ondemand", "dmc_ondemand"}
    for entry in saved:
        assert (root / entry["path"].lstrip("/")).read_text().strip() == "performance"
    # Plain files do not move: still at the lowest clocks, doctor takes them for throttled.
    doctor.main(["--sysfs-root", str(root)])
    assert "held back by DDR (528 of 2112 MHz)" in capsys.readouterr().out
    raise_clocks_as_the_kernel_does(root)
    checks = doctor_checks(root)
    assert checks["decode speed"]["status"] == "ok"
    clocks = [c for c in checks.values() if "pinned" in c["data"]]
    assert len(clocks) == len(POLICIES[soc]) + 2 and all(c["status"] == "ok" for c in clocks)

    proc = cli("tune", "--revert", str(revert_file))  # the tree's root is read from the file
    assert proc.returncode == 0, proc.stderr
    assert {k: v for k, v in snapshot(root).items() if "cur_freq" not in k} == \
        {k: v for k, v in before.items() if "cur_freq" not in k}


def test_an_already_pinned_board_needs_no_write(tmp_path):
    root = build_board(tmp_path / "root", "rk3588", pinned=True)
    before = snapshot(root)
    proc = cli("tune", "--performance", "--sysfs-root", str(root), "--revert-file", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to write" in proc.stdout and "NPU: already pinned" in proc.stdout
    assert snapshot(root) == before and not (tmp_path / "r.json").exists()


def test_without_npu_devfreq_doctor_warns_and_tune_pins_the_rest(tmp_path, capsys):
    root = build_board(tmp_path / "root", "rk3588", npu=False)
    checks = doctor_checks(root)
    assert checks["NPU"]["status"] == "warn" and f"no devfreq device at {NPU_DIR['rk3588']}" in checks["NPU"]["detail"]
    assert tune.main(["--performance", "--sysfs-root", str(root), "--revert-file", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "NPU: no devfreq device" in out and out.count("  wrote ") == 4  # three CPU clusters and the DDR
    assert (root / "sys/class/devfreq/dmc/governor").read_text().strip() == "performance"


def test_a_read_only_file_stops_tune_with_a_clear_error_and_a_usable_revert_file(tmp_path):
    root = build_board(tmp_path / "root", "rk3588")
    npu_governor = root / NPU_DIR["rk3588"].lstrip("/") / "governor"
    before = snapshot(root)
    npu_governor.chmod(0o444)
    revert_file = tmp_path / "revert.json"
    proc = cli("tune", "--performance", "--sysfs-root", str(root), "--revert-file", str(revert_file),
               unprivileged=True)
    assert proc.returncode == 1
    assert f"cannot write {NPU_DIR['rk3588']}/governor: Permission denied; 3 of 5 writes made" in proc.stderr
    assert f"tune --revert {revert_file}" in proc.stderr and "Traceback" not in proc.stderr
    assert (root / "sys/devices/system/cpu/cpufreq/policy6/scaling_governor").read_text().strip() == "performance"
    assert len(json.loads(revert_file.read_text())["restore"]) == 5  # written before the first write

    proc = cli("tune", "--revert", str(revert_file), unprivileged=True)
    assert proc.returncode == 0, proc.stderr  # the unwritable file already holds its old value
    assert f"{NPU_DIR['rk3588']}/governor: already rknpu_ondemand" in proc.stdout
    assert snapshot(root) == before


def test_writing_the_real_sys_without_root_is_refused(tmp_path):
    proc = cli("tune", "--performance", unprivileged=True)
    assert proc.returncode == 1
    assert "writing /sys needs root: run it with sudo" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read revert file"),
    ('{"format": "something else", "restore": []}', "is not a revert file"),
    ('{"format": "%s", "restore": [{"path": "/etc/passwd", "value": "x"}]}' % tune.REVERT_FORMAT, "must be a list"),
])
def test_a_bad_revert_file_is_refused_before_any_write(content, message, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert tune.main(["--revert", str(bad), "--sysfs-root", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_a_cap_is_lifted_and_a_clock_without_performance_is_fixed_through_userspace(tmp_path, capsys):
    root = build_board(tmp_path / "root", "rk3576")
    ddr = root / "sys/class/devfreq/dmc"
    npu = root / NPU_DIR["rk3576"].lstrip("/")
    (ddr / "max_freq").write_text("1560000000\n")  # capped below the 2112 MHz the DDR offers
    (npu / "available_governors").write_text("rknpu_ondemand userspace powersave\n")
    before = snapshot(root)
    revert_file = tmp_path / "revert.json"
    assert tune.main(["--performance", "--sysfs-root", str(root), "--revert-file", str(revert_file)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {NPU_DIR['rk3576']}/governor: rknpu_ondemand → userspace" in out
    assert f"wrote {NPU_DIR['rk3576']}/userspace/set_freq: - → 1000000000" in out
    assert "wrote /sys/class/devfreq/dmc/max_freq: 1560000000 → 2112000000" in out
    assert (npu / "userspace/set_freq").read_text().strip() == "1000000000"
    restore = [e["path"] for e in json.loads(revert_file.read_text())["restore"]]
    assert f"{NPU_DIR['rk3576']}/userspace/set_freq" not in restore  # the restored governor sets the speed
    assert "/sys/class/devfreq/dmc/max_freq" in restore
    assert tune.main(["--revert", str(revert_file)]) == 0
    after = snapshot(root)
    assert after.pop(f"{NPU_DIR['rk3576'].lstrip('/')}/userspace/set_freq") == "1000000000\n"
    before.pop(f"{NPU_DIR['rk3576'].lstrip('/')}/userspace/set_freq")
    assert after == before
