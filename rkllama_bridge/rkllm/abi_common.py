"""What every RKLLM C ABI shares: the structs that never changed, the enums, and the ABI descriptor.

Layouts follow ``rkllm.h`` of the rknn-llm releases; each ``abi_*`` module adds the structs that
changed in its release and describes itself with an :class:`Abi`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

LLMHandle = ctypes.c_void_p

# typedef enum { RKLLM_RUN_NORMAL = 0, RKLLM_RUN_WAITING = 1, RKLLM_RUN_FINISH = 2, RKLLM_RUN_ERROR = 3 } LLMCallState;
RKLLM_RUN_NORMAL = 0
RKLLM_RUN_WAITING = 1
RKLLM_RUN_FINISH = 2
RKLLM_RUN_ERROR = 3
# 1.1.x only: the state of the callback that carries the last hidden layer (later releases use RKLLM_RUN_NORMAL).
RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4

# typedef enum { RKLLM_INPUT_PROMPT = 0, RKLLM_INPUT_TOKEN = 1, RKLLM_INPUT_EMBED = 2, RKLLM_INPUT_MULTIMODAL = 3 }
RKLLM_INPUT_PROMPT = 0
RKLLM_INPUT_TOKEN = 1
RKLLM_INPUT_EMBED = 2
RKLLM_INPUT_MULTIMODAL = 3

# typedef enum { RKLLM_INFER_GENERATE = 0, RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1, RKLLM_INFER_GET_LOGITS = 2 }
RKLLM_INFER_GENERATE = 0
RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1

# Return values of the int-returning result callback (1.2.1+): 0 continue, 1 pause.
CALLBACK_CONTINUE = 0
CALLBACK_PAUSE = 1
# 1.3.0: "release the current output buffer", for the large buffers of the hidden-layer and logits modes.
CALLBACK_RELEASE = 2


class RKLLMLoraAdapter(ctypes.Structure):
    """typedef struct { const char* lora_adapter_path; const char* lora_adapter_name; float scale; }"""

    _fields_ = [
        ("lora_adapter_path", ctypes.c_char_p),
        ("lora_adapter_name", ctypes.c_char_p),
        ("scale", ctypes.c_float),
    ]


class RKLLMEmbedInput(ctypes.Structure):
    """typedef struct { float* embed; size_t n_tokens; }"""

    _fields_ = [("embed", ctypes.POINTER(ctypes.c_float)), ("n_tokens", ctypes.c_size_t)]


class RKLLMTokenInput(ctypes.Structure):
    """typedef struct { int32_t* input_ids; size_t n_tokens; }"""

    _fields_ = [("input_ids", ctypes.POINTER(ctypes.c_int32)), ("n_tokens", ctypes.c_size_t)]


class RKLLMLoraParam(ctypes.Structure):
    """typedef struct { const char* lora_adapter_name; }"""

    _fields_ = [("lora_adapter_name", ctypes.c_char_p)]


class RKLLMPromptCacheParam(ctypes.Structure):
    """typedef struct { int save_prompt_cache; const char* prompt_cache_path; }"""

    _fields_ = [("save_prompt_cache", ctypes.c_int), ("prompt_cache_path", ctypes.c_char_p)]


class RKLLMResultLastHiddenLayer(ctypes.Structure):
    """typedef struct { const float* hidden_states; int embd_size; int num_tokens; }"""

    _fields_ = [
        ("hidden_states", ctypes.POINTER(ctypes.c_float)),
        ("embd_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]


@dataclass(frozen=True)
class Abi:
    """One C ABI of librkllmrt: its structs, callback type, bindings and what it can do.

    ``bind(cdll)`` sets argtypes/restype of every function the ABI declares. The capability flags let
    the handle stay ABI-agnostic.
    """

    name: str
    releases: tuple[str, ...]
    RKLLMParam: type
    RKLLMInput: type
    RKLLMInferParam: type
    RKLLMResult: type
    LLMResultCallback: type
    structs: tuple[type, ...]  # every struct of the header, for layout checks
    bind: Callable[[ctypes.CDLL], None]
    symbols: tuple[str, ...]  # functions this ABI's header declares
    callback_returns_int: bool
    init_takes_callback_struct: bool
    has_keep_history: bool
    has_role: bool
    has_perf: bool
    has_run_overrides: bool  # RKLLMInferParam carries sampling params and max_new_tokens (1.3)
    clear_kv_cache_args: int  # 0 = no rkllm_clear_kv_cache, else its number of parameters
    is_running_busy: int  # what rkllm_is_running returns while a run is in progress, per the header
    RKLLMCallback: type | None = None  # the 1.3 callback struct
    hidden_layer_state: int = RKLLM_RUN_NORMAL  # the LLMCallState of the callback carrying last_hidden_layer
    callback_can_release: bool = False  # the callback may return CALLBACK_RELEASE (1.3)

    @property
    def has_n_image(self) -> bool:
        """Whether the multimodal input takes several images and their size (1.2.1+)."""
        mm = dict(dict(self.RKLLMInput._fields_)["_u"]._fields_)["multimodal_input"]
        fields = _field_names(mm) | (_field_names(dict(mm._fields_)["image"]) if "image" in _field_names(mm) else set())
        return "n_image" in fields

    @property
    def param_fields(self) -> frozenset:
        return _field_names(self.RKLLMParam) | _field_names(self.RKLLMParam._fields_[-1][1])


def _field_names(struct: type) -> frozenset:
    return frozenset(name for name, *_ in struct._fields_)


BASE_SYMBOLS = (
    "rkllm_createDefaultParam",
    "rkllm_init",
    "rkllm_load_lora",
    "rkllm_load_prompt_cache",
    "rkllm_release_prompt_cache",
    "rkllm_destroy",
    "rkllm_run",
    "rkllm_run_async",
    "rkllm_abort",
    "rkllm_is_running",
)


def bind_common(lib: ctypes.CDLL, param_return: type) -> None:
    """Bind the functions whose prototypes never changed (``param_return`` is the ABI's RKLLMParam return type)."""
    # RKLLMParam rkllm_createDefaultParam();
    lib.rkllm_createDefaultParam.argtypes = []
    lib.rkllm_createDefaultParam.restype = param_return
    # int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter);
    lib.rkllm_load_lora.argtypes = [LLMHandle, ctypes.POINTER(RKLLMLoraAdapter)]
    lib.rkllm_load_lora.restype = ctypes.c_int
    # int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path);
    lib.rkllm_load_prompt_cache.argtypes = [LLMHandle, ctypes.c_char_p]
    lib.rkllm_load_prompt_cache.restype = ctypes.c_int
    # int rkllm_release_prompt_cache(LLMHandle handle);
    lib.rkllm_release_prompt_cache.argtypes = [LLMHandle]
    lib.rkllm_release_prompt_cache.restype = ctypes.c_int
    # int rkllm_destroy(LLMHandle handle);
    lib.rkllm_destroy.argtypes = [LLMHandle]
    lib.rkllm_destroy.restype = ctypes.c_int
    # int rkllm_abort(LLMHandle handle);
    lib.rkllm_abort.argtypes = [LLMHandle]
    lib.rkllm_abort.restype = ctypes.c_int
    # int rkllm_is_running(LLMHandle handle);
    lib.rkllm_is_running.argtypes = [LLMHandle]
    lib.rkllm_is_running.restype = ctypes.c_int


def bind_run(lib: ctypes.CDLL, input_type: type, infer_type: type) -> None:
    """Bind rkllm_run / rkllm_run_async for the ABI's RKLLMInput and RKLLMInferParam."""
    # int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params, void* userdata);
    lib.rkllm_run.argtypes = [LLMHandle, ctypes.POINTER(input_type), ctypes.POINTER(infer_type), ctypes.c_void_p]
    lib.rkllm_run.restype = ctypes.c_int
    # int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params,
    #                     void* userdata);
    lib.rkllm_run_async.argtypes = [LLMHandle, ctypes.POINTER(input_type), ctypes.POINTER(infer_type),
                                    ctypes.c_void_p]
    lib.rkllm_run_async.restype = ctypes.c_int


def param_return_type(param: type) -> type:
    """A return type for rkllm_createDefaultParam larger than the ABI's RKLLMParam.

    Structs this large are returned through a caller-provided buffer on aarch64 and x86_64; giving the
    library more room than it should need means a library of another ABI cannot write past the buffer
    before the defaults' sanity check (library.py) notices the mismatch.
    """
    return type(f"{param.__name__}Return", (ctypes.Structure,),
                {"_fields_": [("param", param), ("slack", ctypes.c_uint8 * 256)]})
