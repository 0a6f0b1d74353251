"""The ctypes structs of every ABI have exactly the sizes and field offsets gcc gives the same header structs."""

from __future__ import annotations

import ctypes
import re

import pytest

from rkllama_bridge.rkllm import get_abi

# RKLLMParam sizes stated by the design notes for each release line (checked against the real headers).
PARAM_SIZES = {"1.1": 200, "1.2.0": 208, "1.2.1": 208, "1.3": 184}


def c_name(cls: type) -> str:
    """Python struct names carry an ABI suffix where one module holds two layouts (RKLLMParam_1_2_0)."""
    return re.sub(r"(_\d+)+$", "", cls.__name__)


def python_layout(cls: type) -> dict:
    """``{"Struct.sizeof": n, "Struct.field": offset, ...}`` with nested anonymous types flattened like C."""
    out = {f"{c_name(cls)}.sizeof": ctypes.sizeof(cls)}

    def walk(struct: type, prefix: str, base: int) -> None:
        anonymous = set(getattr(struct, "_anonymous_", ()))
        for name, ftype, *_ in struct._fields_:
            offset = base + getattr(struct, name).offset
            inline = ftype.__name__.startswith("_")  # an unnamed struct/union type in the header
            if name in anonymous:
                walk(ftype, prefix, offset)
                continue
            out[f"{c_name(cls)}.{prefix}{name}"] = offset
            if inline:
                walk(ftype, f"{prefix}{name}.", offset)

    walk(cls, "", 0)
    return out


def stub_layout(lib: ctypes.CDLL) -> dict:
    lib.stub_layout_name.restype = ctypes.c_char_p
    lib.stub_layout_name.argtypes = [ctypes.c_int]
    lib.stub_layout_value.restype = ctypes.c_long
    lib.stub_layout_value.argtypes = [ctypes.c_int]
    return {lib.stub_layout_name(i).decode(): lib.stub_layout_value(i) for i in range(lib.stub_layout_count())}


def test_every_bound_struct_matches_the_c_layout(abi, built_stub):
    lib = ctypes.CDLL(str(built_stub(abi)))
    c = stub_layout(lib)
    py = {}
    for struct in get_abi(abi).structs:
        py.update(python_layout(struct))
    assert py == c  # same names (every field bound on both sides) and same sizes/offsets


def test_param_size_is_the_documented_one(abi, built_stub):
    lib = ctypes.CDLL(str(built_stub(abi)))
    assert stub_layout(lib)["RKLLMParam.sizeof"] == PARAM_SIZES[abi]
    assert ctypes.sizeof(get_abi(abi).RKLLMParam) == PARAM_SIZES[abi]


@pytest.mark.parametrize("name", ["1.1", "1.2.0", "1.2.1", "1.3"])
def test_stub_exports_exactly_the_functions_of_its_header(name, built_stub):
    lib = ctypes.CDLL(str(built_stub(name)))
    own = set(get_abi(name).symbols)
    every = {s for other in ("1.1", "1.2.0", "1.2.1", "1.3") for s in get_abi(other).symbols}
    assert {s for s in every if hasattr(lib, s)} == own


def test_later_abis_change_what_the_design_says(built_stub):
    """The differences the runtime relies on: callback return type, init argument, input and result fields."""
    v11, v120, v121, v13 = (get_abi(n) for n in ("1.1", "1.2.0", "1.2.1", "1.3"))
    assert (v11.callback_returns_int, v120.callback_returns_int, v121.callback_returns_int) == (False, False, True)
    assert [a.init_takes_callback_struct for a in (v11, v120, v121, v13)] == [False, False, False, True]
    assert "role" not in dict(v120.RKLLMInput._fields_) and "role" in dict(v121.RKLLMInput._fields_)
    assert "perf" not in dict(v120.RKLLMResult._fields_) and "perf" in dict(v121.RKLLMResult._fields_)
    assert "keep_history" not in dict(v11.RKLLMInferParam._fields_)
    assert "keep_history" in dict(v120.RKLLMInferParam._fields_)
