"""Finding, identifying and lazily loading librkllmrt.

The library is located from an explicit path, ``RKLLM_LIB`` or the usual install locations. Its RKLLM
release is read from the version string embedded in the file (the real library prints it through
``"rkllm-runtime version: %s"``), without loading it, so a foreign-architecture or unknown library is
reported clearly instead of crashing. ``RKLLM_ABI`` overrides the detection. After loading, the
exported symbols and the defaults returned by ``rkllm_createDefaultParam`` are checked against the
chosen ABI, so a wrong layout becomes an error before any handle is created.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..runtimes.base import RuntimeUnavailable
from . import ABI_NAMES, abi_for_version, all_abis, get_abi
from .abi_common import Abi

log = logging.getLogger(__name__)

LIB_ENV = "RKLLM_LIB"
ABI_ENV = "RKLLM_ABI"
DEFAULT_LOCATIONS = (
    "/usr/lib/librkllmrt.so",
    "/usr/local/lib/librkllmrt.so",
    "/usr/lib/aarch64-linux-gnu/librkllmrt.so",
    "/usr/lib64/librkllmrt.so",
)
STUB_MARKER = b"RKLLM_STUB"

_EXPLICIT = re.compile(rb"rkllm-runtime version:? v?(\d+\.\d+\.\d+(?:b\d+)?)")
_STANDALONE = re.compile(rb"\x00(\d+\.\d+\.\d+(?:b\d+)?)(?: [\x20-\x7e]{0,60})?(?=\x00)")
_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0x03: "x86", 0xF3: "riscv64"}
_HOST_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "arm", "i686": "x86"}


def find_library(lib_path: str | None = None) -> Path:
    """The librkllmrt to use: ``lib_path``, else ``$RKLLM_LIB``, else the first default location that exists."""
    explicit = lib_path or os.environ.get(LIB_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "RKLLM_LIB" if not lib_path else "the given library path"
            raise RuntimeUnavailable(f"librkllmrt not found at {path} (from {source})")
        return path
    for candidate in DEFAULT_LOCATIONS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeUnavailable("librkllmrt not found: set RKLLM_LIB=/path/to/librkllmrt.so "
                             f"(looked in {', '.join(DEFAULT_LOCATIONS)})")


@dataclass(frozen=True)
class VersionScan:
    """What the library file says about itself, read without loading it."""

    version: str | None
    candidates: tuple[str, ...]
    elf_machine: str | None
    is_stub: bool


def scan_library(path: Path) -> VersionScan:
    """Read the embedded RKLLM version, the ELF machine and the stub marker from the file's bytes."""
    data = path.read_bytes()
    machine = None
    if data[:4] == b"\x7fELF" and len(data) >= 20:
        endian = "<" if data[5] == 1 else ">"
        code = struct.unpack(endian + "H", data[18:20])[0]
        machine = _ELF_MACHINES.get(code, f"machine 0x{code:x}")
    explicit = {m.group(1).decode() for m in _EXPLICIT.finditer(data)}
    standalone = {m.group(1).decode() for m in _STANDALONE.finditer(data)}
    # Other version strings live in the library too (e.g. the minimum NPU driver "0.9.7"); keep only
    # the ones that name an RKLLM release this module knows about.
    known = sorted(v for v in standalone if abi_for_version(v) is not None)
    version = None
    if len(explicit) == 1:
        version = next(iter(explicit))
    elif len(known) == 1:
        version = known[0]
    return VersionScan(version, tuple(sorted(explicit) or known), machine, STUB_MARKER in data)


def host_machine() -> str:
    m = platform.machine().lower()
    return _HOST_MACHINES.get(m, m)


@dataclass
class DefaultsCheck:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_defaults(abi: Abi, p: ctypes.Structure) -> DefaultsCheck:
    """Plausibility of rkllm_createDefaultParam's result read through ``abi``: a wrong layout shifts
    fields so that floats, pointers and counts come out absurd."""
    out = DefaultsCheck()
    fields = abi.param_fields

    def bad(name: str, value: object) -> None:
        out.errors.append(f"{name}={value!r}")

    def address(name: str) -> int | None:
        # Read pointers as numbers: a c_char_p attribute would dereference a garbage address.
        return ctypes.c_void_p.from_buffer(p, getattr(type(p), name).offset).value

    if address("model_path") is not None:
        bad("model_path", hex(address("model_path")))
    if not 0 < p.max_context_len <= 1 << 22:
        bad("max_context_len", p.max_context_len)
    if not 0 <= p.top_k <= 1 << 20:
        bad("top_k", p.top_k)
    if not 0.0 < p.top_p <= 1.0:
        bad("top_p", p.top_p)
    if not 0.0 <= p.temperature <= 10.0:
        bad("temperature", p.temperature)
    if not 0.0 <= p.repeat_penalty <= 10.0:
        bad("repeat_penalty", p.repeat_penalty)
    for name in ("img_start", "img_end", "img_content"):
        if name in fields and address(name) is not None:
            bad(name, hex(address(name)))
    if "n_keep" in fields and not -1 <= p.n_keep <= max(p.max_context_len, 0):
        bad("n_keep", p.n_keep)
    if "n_batch" in fields and p.extend_param.n_batch < 1:
        # rkllm.h documents a default of 1; not seen on hardware, so only a warning unless the ABI was forced.
        out.warnings.append(f"extend_param.n_batch={p.extend_param.n_batch}")
    return out


class RKLLMLibrary:
    """One librkllmrt file: its identity (version, ABI), loaded and bound on first use of :attr:`cdll`.

    ``abi`` overrides detection (an ABI name or release such as ``"1.2.3"``); default ``$RKLLM_ABI``.
    Raises :class:`RuntimeUnavailable` with a message saying what to do when the file cannot be used.
    """

    def __init__(self, lib_path: str | None = None, abi: str | None = None):
        self.path = find_library(lib_path)
        self.scan = scan_library(self.path)
        self.version = self.scan.version
        self.abi, self.abi_source, self.abi_forced = self._resolve_abi(abi or os.environ.get(ABI_ENV))
        self._cdll: ctypes.CDLL | None = None
        self._lock = threading.Lock()
        self.default_warnings: list[str] = []

    def _resolve_abi(self, override: str | None) -> tuple[Abi, str, bool]:
        if override:
            try:
                abi = get_abi(override)
            except ValueError as exc:
                raise RuntimeUnavailable(f"RKLLM_ABI: {exc}") from None
            detected = abi_for_version(self.version) if self.version else None
            if detected and detected != abi.name:
                log.warning("RKLLM_ABI=%s overrides the ABI %s of the library's version string %s",
                            override, detected, self.version)
            return abi, f"forced by RKLLM_ABI={override}", True
        if self.version is None:
            found = f" (candidates: {', '.join(self.scan.candidates)})" if self.scan.candidates else ""
            raise RuntimeUnavailable(f"cannot tell which RKLLM release {self.path} is{found}: "
                                     f"set RKLLM_ABI to one of {', '.join(ABI_NAMES)}")
        name = abi_for_version(self.version)
        if name is None:
            raise RuntimeUnavailable(
                f"{self.path} is RKLLM {self.version}, which is not supported (supported: 1.1.x, 1.2.0-1.2.3, "
                f"1.3.0); set RKLLM_ABI to one of {', '.join(ABI_NAMES)} to try a known layout")
        return all_abis()[name], f"detected from the embedded version string {self.version}", False

    @property
    def is_stub(self) -> bool:
        return self.scan.is_stub

    @property
    def cdll(self) -> ctypes.CDLL:
        """The loaded and bound library (loaded once, on first access)."""
        with self._lock:
            if self._cdll is None:
                self._cdll = self._load()
            return self._cdll

    def load(self) -> ctypes.CDLL:
        """Load, bind and check the library now (RuntimeUnavailable if it cannot be used); idempotent."""
        return self.cdll

    def _load(self) -> ctypes.CDLL:
        host = host_machine()
        if self.scan.elf_machine and self.scan.elf_machine != host:
            raise RuntimeUnavailable(
                f"{self.path} is built for {self.scan.elf_machine} but this machine is {host}: the rkllm runtime "
                "runs on the RK3588/RK3576 board; use --runtime host or --runtime sim here")
        try:
            cdll = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot load {self.path}: {exc}") from None
        self._check_symbols(cdll)
        self.abi.bind(cdll)
        self._check_defaults(cdll)
        log.info("loaded %s (RKLLM %s, ABI %s, %s)", self.path, self.version or "?", self.abi.name, self.abi_source)
        return cdll

    def _check_symbols(self, cdll: ctypes.CDLL) -> None:
        missing = [s for s in self.abi.symbols if not hasattr(cdll, s)]
        others = {s for a in all_abis().values() for s in a.symbols} - set(self.abi.symbols)
        extra = sorted(s for s in others if hasattr(cdll, s))
        if missing or extra:
            detail = "; ".join(filter(None, [
                f"missing {', '.join(missing)}" if missing else "",
                f"exports {', '.join(extra)} which ABI {self.abi.name} does not have" if extra else ""]))
            raise RuntimeUnavailable(self._mismatch(detail))

    def _check_defaults(self, cdll: ctypes.CDLL) -> None:
        result = self.abi_default_param(cdll)
        check = check_defaults(self.abi, result)
        errors = check.errors + (check.warnings if self.abi_forced else [])
        if errors:
            raise RuntimeUnavailable(self._mismatch("rkllm_createDefaultParam returned implausible values "
                                                    f"({', '.join(errors)})"))
        for w in check.warnings:
            log.warning("rkllm_createDefaultParam: unexpected default %s", w)
        self.default_warnings = check.warnings

    def _mismatch(self, detail: str) -> str:
        version = f"RKLLM {self.version}" if self.version else "an unknown RKLLM release"
        return (f"ABI mismatch: {self.path} ({version}) does not match the RKLLM {self.abi.name} layout "
                f"({self.abi_source}): {detail}. Set RKLLM_ABI to the library's real ABI "
                f"({', '.join(ABI_NAMES)}) or use a library of a supported release")

    def abi_default_param(self, cdll: ctypes.CDLL | None = None) -> ctypes.Structure:
        """A copy of ``rkllm_createDefaultParam()`` as this ABI's RKLLMParam."""
        ret = (cdll or self.cdll).rkllm_createDefaultParam()
        param = self.abi.RKLLMParam()
        ctypes.memmove(ctypes.byref(param), ctypes.byref(ret), ctypes.sizeof(param))
        return param

    def describe(self) -> dict:
        """Identity of the library for logs, /health and doctor."""
        return {
            "path": str(self.path),
            "version": self.version,
            "abi": self.abi.name,
            "abi_source": self.abi_source,
            "machine": self.scan.elf_machine,
            "stub": self.is_stub,
        }
