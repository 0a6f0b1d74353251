"""ctypes bindings of Rockchip's librkllmrt, one module per C ABI, and the ``rkllm`` runtime built on them.

Nothing here loads the native library at import time: :class:`~.library.RKLLMLibrary` does that on
first use. ABI names are the first release that introduced the layout:

=========  =========================  ===================================================
ABI        releases                   module
=========  =========================  ===================================================
``1.1``    1.1.0 - 1.1.4              :mod:`.abi_1_1`
``1.2.0``  1.2.0 (and 1.2.1b1)        :mod:`.abi_1_2` (``ABI_1_2_0``)
``1.2.1``  1.2.1, 1.2.2, 1.2.3        :mod:`.abi_1_2` (``ABI_1_2_1``)
``1.3``    1.3.0                      :mod:`.abi_1_3`
=========  =========================  ===================================================
"""

from __future__ import annotations

import re

from .abi_common import Abi

ABI_NAMES: tuple[str, ...] = ("1.1", "1.2.0", "1.2.1", "1.3")

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(b\d+)?$")


def all_abis() -> dict[str, Abi]:
    """Every supported ABI by name."""
    from . import abi_1_1, abi_1_2, abi_1_3

    return {"1.1": abi_1_1.ABI, "1.2.0": abi_1_2.ABI_1_2_0, "1.2.1": abi_1_2.ABI_1_2_1, "1.3": abi_1_3.ABI}


def abi_for_version(version: str) -> str | None:
    """The ABI name of an RKLLM release (``"1.2.3"`` -> ``"1.2.1"``), or None if it is not supported."""
    m = _VERSION.match(version.strip())
    if not m:
        return None
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3))
    beta = m.group(4)
    if (major, minor) == (1, 1):
        return "1.1"
    if (major, minor) == (1, 2):
        # 1.2.1b1 still had the 1.2.0 callback and input layout.
        return "1.2.0" if patch == 0 or (patch == 1 and beta) else "1.2.1"
    if (major, minor, patch) == (1, 3, 0):
        return "1.3"
    return None


def get_abi(name_or_version: str) -> Abi:
    """Look up an ABI by name (``"1.2.1"``) or by release (``"1.2.3"``); ValueError with the choices if unknown."""
    abis = all_abis()
    key = name_or_version.strip()
    if key in abis:
        return abis[key]
    mapped = abi_for_version(key)
    if mapped is None:
        raise ValueError(f"unknown RKLLM ABI {name_or_version!r}: use one of {', '.join(ABI_NAMES)} "
                         f"or a release version such as 1.1.4, 1.2.3, 1.3.0")
    return abis[mapped]
