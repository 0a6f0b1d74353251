"""``rkllama-bridge doctor`` on this machine (no board), on the stub, and on a faked board's /proc and /sys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rkllama_bridge import doctor

from ..native.build import build_stub, write_stub_model
from ..support import REPO


def make_store(root):
    """A model store with a good model, an outdated one, a Git LFS pointer and a host-runtime model."""
    for name, content in {"good": "1.2.3", "old": "1.1.4"}.items():
        write_stub_model(root / name / f"{name}.rkllm", content)
        (root / name / "Modelfile").write_text(f'FROM="{name}.rkllm"\nNUM_CTX="4096"\n')
    (root / "lfs").mkdir()
    (root / "lfs" / "lfs.rkllm").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:1\nsize 9\n")
    (root / "lfs" / "Modelfile").write_text('FROM="lfs.rkllm"\n')
    (root / "host").mkdir()
    (root / "host" / "Modelfile").write_text('FROM="model.gguf"\n')
    return root


def fake_board(root, compatible=b"radxa,rock-5b\0rockchip,rk3588\0", driver="RKNPU driver: v0.9.6\n"):
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "compatible").write_bytes(compatible)
    (root / "proc" / "device-tree" / "model").write_bytes(b"Radxa ROCK 5B\0")
    (root / "sys" / "kernel" / "debug" / "rknpu").mkdir(parents=True)
    (root / "sys" / "kernel" / "debug" / "rknpu" / "version").write_text(driver)
    for cpu, khz in enumerate([1800000] * 4 + [2400000] * 4):
        d = root / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_max_freq").write_text(f"{khz}\n")
    return root


def test_here_without_a_board_it_says_so_and_exits_0(clean_env, capsys, tmp_path):
    code = doctor.main(["--root", str(tmp_path)])  # an empty root: no device tree, no driver, no library
    out = capsys.readouterr().out
    assert code == 0
    assert "board" in out and "not a Rockchip board" in out
    assert "librkllmrt not found: set RKLLM_LIB" in out
    assert "summary: no Rockchip board on this machine" in out


def test_as_a_command_on_this_machine(clean_env):
    proc = subprocess.run([sys.executable, "-m", "rkllama_bridge.doctor"], capture_output=True, text=True, check=False,
                          cwd=str(REPO), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rkllama-bridge doctor") and "summary:" in proc.stdout


def test_on_the_stub_it_checks_the_library_and_every_model(clean_env, capsys, tmp_path):
    store = make_store(tmp_path / "models")
    code = doctor.main(["--root", str(tmp_path / "empty"), "--lib", str(build_stub("1.2.1")), "--models", str(store)])
    out = capsys.readouterr().out
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if line.startswith("  model")}
    assert code == 0  # errors, but no board: informational
    assert "RKLLM 1.2.3, ABI 1.2.1" in out and "test stub" in out and "defaults match the ABI" in out
    assert "OK" in lines["model good"] and "rkllm-toolkit 1.2.3" in lines["model good"]
    assert "ERROR" in lines["model old"] and "converted for RKLLM 1.1.4 but the runtime is 1.2.3" in lines["model old"]
    assert "ERROR" in lines["model lfs"] and "Git LFS pointer" in lines["model lfs"]
    assert "INFO" in lines["model host"]
    assert doctor.main(["--root", str(tmp_path / "empty"), "--lib", str(build_stub("1.2.1")), "--models",
                        str(store), "--strict"]) == 1


def test_on_a_board_it_reports_soc_driver_cores_and_fails_on_errors(clean_env, capsys, tmp_path):
    root = fake_board(tmp_path / "root")
    store = make_store(tmp_path / "models")
    code = doctor.main(["--root", str(root), "--lib", str(build_stub("1.3")), "--models", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["board"] == "RK3588" and checks["board"]["status"] == "ok"
    assert checks["NPU driver"]["status"] == "warn" and "0.9.6" in checks["NPU driver"]["detail"]
    assert ">= 0.9.8" in checks["NPU driver"]["detail"]  # RKLLM 1.3 wants the newer driver
    assert checks["CPU"]["data"]["max_mhz"] == [1800] * 4 + [2400] * 4
    assert checks["model good"]["status"] == "error"  # converted by 1.2.3, runtime 1.3.0
    assert code == 1


@pytest.mark.parametrize("compatible, expect", [(b"rockchip,rk3576\0", "RK3576"), (b"rockchip,rk3566\0", "RK3566")])
def test_board_detection_from_the_device_tree(compatible, expect, clean_env, capsys, tmp_path):
    root = fake_board(tmp_path / "root", compatible=compatible, driver="0.9.8")
    doctor.main(["--root", str(root)])
    out = capsys.readouterr().out
    assert expect in out
    if expect == "RK3566":
        assert "RKLLM supports RK3588 and RK3576 only" in out
