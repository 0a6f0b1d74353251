"""Finding and identifying librkllmrt: version detection, ABI overrides, mismatches, clear errors."""

from __future__ import annotations

import struct

import pytest

from rkllama_bridge.rkllm import abi_for_version, get_abi
from rkllama_bridge.rkllm.library import RKLLMLibrary, scan_library
from rkllama_bridge.rkllm.runtime import RKLLMRuntime
from rkllama_bridge.runtimes.base import ModelLoadError, RuntimeUnavailable

from ..native.build import build_stub


@pytest.mark.parametrize("version, abi", [("1.1.0", "1.1"), ("1.1.4", "1.1"), ("1.2.0", "1.2.0"),
                                          ("1.2.1b1", "1.2.0"), ("1.2.1", "1.2.1"), ("1.2.3", "1.2.1"),
                                          ("1.3.0", "1.3"), ("1.0.1", None), ("1.4.0", None), ("0.9.7", None)])
def test_release_versions_map_to_abis(version, abi):
    assert abi_for_version(version) == abi


def test_get_abi_rejects_ambiguous_names():
    with pytest.raises(ValueError, match="1.2.0, 1.2.1"):
        get_abi("1.2")


@pytest.mark.parametrize("abi, version", [("1.1", "1.1.2"), ("1.2.1", "1.2.1"), ("1.3", "1.3.0")])
def test_version_is_read_from_the_embedded_string_not_the_decoys(abi, version, clean_env):
    lib_path = build_stub(abi, version)
    scan = scan_library(lib_path)  # the file also holds "0.9.7" and a "%s" format, as the real library does
    assert scan.version == version and scan.is_stub
    lib = RKLLMLibrary(str(lib_path))
    assert (lib.version, lib.abi.name, lib.abi_forced) == (version, abi, False)


def test_missing_library_says_how_to_point_at_it(clean_env, tmp_path, monkeypatch):
    monkeypatch.setattr("rkllama_bridge.rkllm.library.DEFAULT_LOCATIONS", (str(tmp_path / "none.so"),))
    with pytest.raises(RuntimeUnavailable, match="set RKLLM_LIB=/path/to/librkllmrt.so"):
        _ = RKLLMRuntime().library
    clean_env.setenv("RKLLM_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(RuntimeUnavailable, match="not found at .*missing.so"):
        _ = RKLLMRuntime().library


def test_runtime_construction_does_not_touch_the_library(clean_env):
    clean_env.setenv("RKLLM_LIB", "/nonexistent/librkllmrt.so")
    runtime = RKLLMRuntime()  # lazily: nothing is looked up yet
    assert "unavailable" in runtime.label


def fake_elf(path, machine: int, strings: bytes):
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 3, machine)
    path.write_bytes(header + bytes(64) + strings + bytes(64))
    return path


def test_a_board_library_on_another_machine_is_a_clear_error(tmp_path, clean_env):
    lib = fake_elf(tmp_path / "librkllmrt.so", 0xB7, b"\x00rkllm-runtime version: %s\x00" + b"\x001.2.3\x00")
    runtime = RKLLMRuntime(str(lib))
    assert runtime.library.version == "1.2.3"
    with pytest.raises(RuntimeUnavailable, match="built for aarch64 but this machine is x86_64"):
        runtime.library.load()


def test_unknown_or_unsupported_versions_ask_for_rkllm_abi(tmp_path, clean_env):
    none = fake_elf(tmp_path / "a.so", 0xB7, b"\x00no version here\x00")
    with pytest.raises(RuntimeUnavailable, match="cannot tell which RKLLM release .* set RKLLM_ABI"):
        RKLLMLibrary(str(none))
    newer = fake_elf(tmp_path / "b.so", 0xB7, b"\x00rkllm-runtime version: 1.4.0\x00")
    with pytest.raises(RuntimeUnavailable, match="RKLLM 1.4.0, which is not supported"):
        RKLLMLibrary(str(newer))
    assert RKLLMLibrary(str(newer), abi="1.3").abi.name == "1.3"


@pytest.mark.parametrize("lib_abi, forced, why", [
    ("1.3", "1.1", "exports rkllm_clear_kv_cache"),  # symbols give the older layout away
    ("1.1", "1.2.0", "missing rkllm_clear_kv_cache"),
    ("1.2.0", "1.2.1", "missing rkllm_get_kv_cache_size"),
    ("1.3", "1.2.1", "img_end="),  # same symbols: the defaults read through the wrong layout are absurd
    ("1.2.1", "1.3", "n_batch=0"),
])
def test_forcing_the_wrong_abi_fails_clearly_instead_of_crashing(lib_abi, forced, why, clean_env, stub_model):
    clean_env.setenv("RKLLM_LIB", str(build_stub(lib_abi)))
    clean_env.setenv("RKLLM_ABI", forced)
    runtime = RKLLMRuntime()
    with pytest.raises(RuntimeUnavailable, match="ABI mismatch") as err:
        runtime.load(stub_model())
    assert why in str(err.value) and "Set RKLLM_ABI" in str(err.value)


def test_model_converted_for_another_release_is_refused(stub_runtime, stub_model):
    runtime = stub_runtime("1.2.1")  # embeds 1.2.3
    with pytest.raises(ModelLoadError, match="converted for RKLLM 1.1.4 but the runtime is 1.2.3"):
        runtime.load(stub_model(toolkit_version="1.1.4"))
    runtime.load(stub_model(name="ok", toolkit_version="1.2.1")).close()


@pytest.mark.parametrize("content, why", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html>Not found</html>", "HTML page"),
    (b"GGUF\x03\x00\x00\x00", "GGUF model"),
    (b"", "empty"),
])
def test_files_that_are_not_rkllm_models_are_refused_before_loading(content, why, stub_runtime, stub_model,
                                                                     tmp_path):
    spec = stub_model()
    spec.weights.write_bytes(content)
    with pytest.raises(ModelLoadError, match=why):
        stub_runtime("1.3").load(spec)
