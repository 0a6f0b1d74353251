"""librkllmrt C ABI of RKLLM 1.1.0-1.1.4 (``rkllm.h`` identical across those releases).

RKLLMParam is 200 bytes; the result callback returns void and is passed to rkllm_init by value;
RKLLMInferParam has no keep_history and there is no rkllm_clear_kv_cache. A run in
RKLLM_INFER_GET_LAST_HIDDEN_LAYER mode calls back with a state of its own, RKLLM_RUN_GET_LAST_HIDDEN_LAYER
(4), which 1.2.0 dropped: from then on the hidden layer comes with RKLLM_RUN_NORMAL.
"""

from __future__ import annotations

import ctypes

from .abi_common import (
    BASE_SYMBOLS,
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER,
    Abi,
    LLMHandle,
    RKLLMEmbedInput,
    RKLLMLoraAdapter,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResultLastHiddenLayer,
    RKLLMTokenInput,
    bind_common,
    bind_run,
    param_return_type,
)


class RKLLMExtendParam(ctypes.Structure):
    """typedef struct { int32_t base_domain_id; uint8_t reserved[112]; } RKLLMExtendParam;"""

    _fields_ = [("base_domain_id", ctypes.c_int32), ("reserved", ctypes.c_uint8 * 112)]


class RKLLMParam(ctypes.Structure):
    """RKLLMParam of 1.1.x (200 bytes)."""

    _fields_ = [
        ("model_path", ctypes.c_char_p),
        ("max_context_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
        ("skip_special_token", ctypes.c_bool),
        ("is_async", ctypes.c_bool),
        ("img_start", ctypes.c_char_p),
        ("img_end", ctypes.c_char_p),
        ("img_content", ctypes.c_char_p),
        ("extend_param", RKLLMExtendParam),
    ]


class RKLLMMultiModalInput(ctypes.Structure):
    """typedef struct { char* prompt; float* image_embed; size_t n_image_tokens; } RKLLMMultiModelInput;"""

    _fields_ = [
        ("prompt", ctypes.c_char_p),
        ("image_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_image_tokens", ctypes.c_size_t),
    ]


class _RKLLMInputUnion(ctypes.Union):
    _fields_ = [
        ("prompt_input", ctypes.c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]


class RKLLMInput(ctypes.Structure):
    """typedef struct { RKLLMInputType input_type; union { ... }; } RKLLMInput;"""

    _anonymous_ = ("_u",)
    _fields_ = [("input_type", ctypes.c_int), ("_u", _RKLLMInputUnion)]


class RKLLMInferParam(ctypes.Structure):
    """typedef struct { RKLLMInferMode mode; RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params; } RKLLMInferParam;"""

    _fields_ = [
        ("mode", ctypes.c_int),
        ("lora_params", ctypes.POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", ctypes.POINTER(RKLLMPromptCacheParam)),
    ]


class RKLLMResult(ctypes.Structure):
    """typedef struct { const char* text; int32_t token_id; RKLLMResultLastHiddenLayer last_hidden_layer; }"""

    _fields_ = [
        ("text", ctypes.c_char_p),
        ("token_id", ctypes.c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
    ]


# typedef void(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
LLMResultCallback = ctypes.CFUNCTYPE(None, ctypes.POINTER(RKLLMResult), ctypes.c_void_p, ctypes.c_int)

RKLLMParamReturn = param_return_type(RKLLMParam)


def bind(lib: ctypes.CDLL) -> None:
    """Declare the 1.1.x prototypes on ``lib``."""
    bind_common(lib, RKLLMParamReturn)
    bind_run(lib, RKLLMInput, RKLLMInferParam)
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    lib.rkllm_init.argtypes = [ctypes.POINTER(LLMHandle), ctypes.POINTER(RKLLMParam), LLMResultCallback]
    lib.rkllm_init.restype = ctypes.c_int


ABI = Abi(
    name="1.1",
    releases=("1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4"),
    RKLLMParam=RKLLMParam,
    RKLLMInput=RKLLMInput,
    RKLLMInferParam=RKLLMInferParam,
    RKLLMResult=RKLLMResult,
    LLMResultCallback=LLMResultCallback,
    structs=(RKLLMExtendParam, RKLLMParam, RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput,
             RKLLMMultiModalInput, RKLLMInput, RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMInferParam,
             RKLLMResultLastHiddenLayer, RKLLMResult),
    bind=bind,
    symbols=BASE_SYMBOLS,
    callback_returns_int=False,
    init_takes_callback_struct=False,
    has_keep_history=False,
    has_role=False,
    has_perf=False,
    has_run_overrides=False,
    clear_kv_cache_args=0,
    is_running_busy=0,
    hidden_layer_state=RKLLM_RUN_GET_LAST_HIDDEN_LAYER,
)
