"""librkllmrt C ABI of RKLLM 1.3.0.

RKLLMParam shrinks to 184 bytes (img_* moved into the multimodal input, ignore_eos_token added);
rkllm_init takes a pointer to an ``RKLLMCallback`` struct instead of the function itself;
RKLLMInferParam can override sampling parameters and max_new_tokens per run.
Unchanged from 1.2.1: RKLLMExtendParam, RKLLMResult (with perf), the int-returning callback,
rkllm_clear_kv_cache with start/end positions.
"""

from __future__ import annotations

import ctypes

from .abi_1_2 import (
    SYMBOLS_1_2_1,
    LLMResultCallback,
    RKLLMCrossAttnParam,
    RKLLMExtendParam,
    RKLLMPerfStat,
    RKLLMResult,
    RKLLMResultLogits,
    bind_1_2_1_extras,
)
from .abi_common import (
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


class RKLLMParam(ctypes.Structure):
    """RKLLMParam of 1.3.0 (184 bytes)."""

    _fields_ = [
        ("model_path", ctypes.c_char_p),
        ("max_context_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("n_keep", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
        ("skip_special_token", ctypes.c_bool),
        ("ignore_eos_token", ctypes.c_bool),
        ("is_async", ctypes.c_bool),
        ("extend_param", RKLLMExtendParam),
    ]


class _MultiModalImage(ctypes.Structure):
    _fields_ = [
        ("image_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_image_tokens", ctypes.c_size_t),
        ("n_image", ctypes.c_size_t),
        ("image_start", ctypes.c_char_p),
        ("image_end", ctypes.c_char_p),
        ("image_content", ctypes.c_char_p),
        ("image_width", ctypes.c_size_t),
        ("image_height", ctypes.c_size_t),
    ]


class _MultiModalVideo(ctypes.Structure):
    _fields_ = [
        ("video_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_frame_tokens", ctypes.c_size_t),
        ("n_frame_per_video", ctypes.c_size_t),
        ("n_video", ctypes.c_size_t),
        ("video_start", ctypes.c_char_p),
        ("video_end", ctypes.c_char_p),
        ("video_content", ctypes.c_char_p),
        ("frame_width", ctypes.c_size_t),
        ("frame_height", ctypes.c_size_t),
    ]


class RKLLMMultiModalInput(ctypes.Structure):
    """typedef struct { char* prompt; struct {...} image; struct {...} video; } RKLLMMultiModalInput;"""

    _fields_ = [("prompt", ctypes.c_char_p), ("image", _MultiModalImage), ("video", _MultiModalVideo)]


class _RKLLMInputUnion(ctypes.Union):
    _fields_ = [
        ("prompt_input", ctypes.c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]


class RKLLMInput(ctypes.Structure):
    """typedef struct { const char* role; bool enable_thinking; RKLLMInputType input_type; union {...}; }"""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("role", ctypes.c_char_p),
        ("enable_thinking", ctypes.c_bool),
        ("input_type", ctypes.c_int),
        ("_u", _RKLLMInputUnion),
    ]


class RKLLMSamplingParam(ctypes.Structure):
    """typedef struct { int32_t top_k; float top_p; float temperature; float repeat_penalty;
    float frequency_penalty; float presence_penalty; int32_t mirostat; float mirostat_tau;
    float mirostat_eta; } RKLLMSamplingParam;"""

    _fields_ = [
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
    ]


class RKLLMInferParam(ctypes.Structure):
    """typedef struct { RKLLMInferMode mode; RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params; RKLLMSamplingParam* sampling_params; int keep_history;
    int32_t max_new_tokens; } RKLLMInferParam;"""

    _fields_ = [
        ("mode", ctypes.c_int),
        ("lora_params", ctypes.POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", ctypes.POINTER(RKLLMPromptCacheParam)),
        ("sampling_params", ctypes.POINTER(RKLLMSamplingParam)),
        ("keep_history", ctypes.c_int),
        ("max_new_tokens", ctypes.c_int32),
    ]


# typedef int (*LLMTokenizerCallback)(void* userdata, const char* text, int32_t text_len, int32_t* tokens,
#                                     int32_t n_tokens_max);
LLMTokenizerCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                        ctypes.POINTER(ctypes.c_int32), ctypes.c_int32)
# typedef int (*LLMGetEmbedCallback)(void* userdata, int32_t* tokens, uint64_t num_tokens, void* embed,
#                                    uint64_t len);
LLMGetEmbedCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32),
                                       ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)


class RKLLMCallback(ctypes.Structure):
    """typedef struct { LLMResultCallback result_callback; void* result_userdata;
    LLMTokenizerCallback tokenizer_callback; void* tokenizer_userdata;
    LLMGetEmbedCallback embed_callback; void* embed_userdata; } RKLLMCallback;"""

    _fields_ = [
        ("result_callback", LLMResultCallback),
        ("result_userdata", ctypes.c_void_p),
        ("tokenizer_callback", LLMTokenizerCallback),
        ("tokenizer_userdata", ctypes.c_void_p),
        ("embed_callback", LLMGetEmbedCallback),
        ("embed_userdata", ctypes.c_void_p),
    ]


RKLLMParamReturn = param_return_type(RKLLMParam)


def bind(lib: ctypes.CDLL) -> None:
    """Declare the 1.3.0 prototypes on ``lib``."""
    bind_common(lib, RKLLMParamReturn)
    bind_run(lib, RKLLMInput, RKLLMInferParam)
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback);
    lib.rkllm_init.argtypes = [ctypes.POINTER(LLMHandle), ctypes.POINTER(RKLLMParam), ctypes.POINTER(RKLLMCallback)]
    lib.rkllm_init.restype = ctypes.c_int
    bind_1_2_1_extras(lib)


ABI = Abi(
    name="1.3",
    releases=("1.3.0",),
    RKLLMParam=RKLLMParam,
    RKLLMInput=RKLLMInput,
    RKLLMInferParam=RKLLMInferParam,
    RKLLMResult=RKLLMResult,
    LLMResultCallback=LLMResultCallback,
    structs=(RKLLMExtendParam, RKLLMParam, RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput,
             RKLLMMultiModalInput, RKLLMInput, RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMCrossAttnParam,
             RKLLMSamplingParam, RKLLMInferParam, RKLLMResultLastHiddenLayer, RKLLMResultLogits, RKLLMPerfStat,
             RKLLMResult, RKLLMCallback),
    bind=bind,
    symbols=SYMBOLS_1_2_1,
    callback_returns_int=True,
    init_takes_callback_struct=True,
    has_keep_history=True,
    has_role=True,
    has_perf=True,
    has_run_overrides=True,
    clear_kv_cache_args=4,
    is_running_busy=1,
    RKLLMCallback=RKLLMCallback,
    callback_can_release=True,
)
