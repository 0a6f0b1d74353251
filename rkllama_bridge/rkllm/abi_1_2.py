"""librkllmrt C ABIs of RKLLM 1.2.x: ``ABI_1_2_0`` (1.2.0) and ``ABI_1_2_1`` (1.2.1, 1.2.2, 1.2.3).

Both have a 208-byte RKLLMParam (n_keep, embed_flash, enabled_cpus_*), keep_history in
RKLLMInferParam, logits in RKLLMResult and rkllm_clear_kv_cache. 1.2.1 changed more than the
release number suggests: the callback returns int (0 continue, 1 pause), RKLLMInput starts with
``role`` and ``enable_thinking``, RKLLMResult gains ``perf``, the extend params gain n_batch and
use_cross_attn, and rkllm_clear_kv_cache takes two more arguments (start_pos, end_pos).
1.2.2 and 1.2.3 only renamed RKLLMMultiModelInput to RKLLMMultiModalInput.
"""

from __future__ import annotations

import ctypes

from .abi_common import (
    BASE_SYMBOLS,
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

# ----------------------------------------------------------------------------------------- 1.2.0


class RKLLMExtendParam_1_2_0(ctypes.Structure):
    """typedef struct { int32_t base_domain_id; int8_t embed_flash; int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask; uint8_t reserved[106]; } RKLLMExtendParam;  (1.2.0)"""

    _fields_ = [
        ("base_domain_id", ctypes.c_int32),
        ("embed_flash", ctypes.c_int8),
        ("enabled_cpus_num", ctypes.c_int8),
        ("enabled_cpus_mask", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 106),
    ]


class RKLLMExtendParam(ctypes.Structure):
    """RKLLMExtendParam of 1.2.1+ (also 1.3.0): n_batch and use_cross_attn taken from reserved."""

    _fields_ = [
        ("base_domain_id", ctypes.c_int32),
        ("embed_flash", ctypes.c_int8),
        ("enabled_cpus_num", ctypes.c_int8),
        ("enabled_cpus_mask", ctypes.c_uint32),
        ("n_batch", ctypes.c_uint8),
        ("use_cross_attn", ctypes.c_int8),
        ("reserved", ctypes.c_uint8 * 104),
    ]


def _param_fields(extend: type) -> list:
    return [
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
        ("is_async", ctypes.c_bool),
        ("img_start", ctypes.c_char_p),
        ("img_end", ctypes.c_char_p),
        ("img_content", ctypes.c_char_p),
        ("extend_param", extend),
    ]


class RKLLMParam_1_2_0(ctypes.Structure):
    """RKLLMParam of 1.2.0 (208 bytes)."""

    _fields_ = _param_fields(RKLLMExtendParam_1_2_0)


class RKLLMParam(ctypes.Structure):
    """RKLLMParam of 1.2.1-1.2.3 (208 bytes)."""

    _fields_ = _param_fields(RKLLMExtendParam)


class RKLLMMultiModalInput_1_2_0(ctypes.Structure):
    """typedef struct { char* prompt; float* image_embed; size_t n_image_tokens; }  (1.2.0)"""

    _fields_ = [
        ("prompt", ctypes.c_char_p),
        ("image_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_image_tokens", ctypes.c_size_t),
    ]


class RKLLMMultiModalInput(ctypes.Structure):
    """1.2.1+: adds n_image, image_width, image_height."""

    _fields_ = [
        ("prompt", ctypes.c_char_p),
        ("image_embed", ctypes.POINTER(ctypes.c_float)),
        ("n_image_tokens", ctypes.c_size_t),
        ("n_image", ctypes.c_size_t),
        ("image_width", ctypes.c_size_t),
        ("image_height", ctypes.c_size_t),
    ]


class _RKLLMInputUnion_1_2_0(ctypes.Union):
    _fields_ = [
        ("prompt_input", ctypes.c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput_1_2_0),
    ]


class _RKLLMInputUnion(ctypes.Union):
    _fields_ = [
        ("prompt_input", ctypes.c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]


class RKLLMInput_1_2_0(ctypes.Structure):
    """typedef struct { RKLLMInputType input_type; union { ... }; } RKLLMInput;  (1.2.0)"""

    _anonymous_ = ("_u",)
    _fields_ = [("input_type", ctypes.c_int), ("_u", _RKLLMInputUnion_1_2_0)]


class RKLLMInput(ctypes.Structure):
    """typedef struct { const char* role; bool enable_thinking; RKLLMInputType input_type; union {...}; }"""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("role", ctypes.c_char_p),
        ("enable_thinking", ctypes.c_bool),
        ("input_type", ctypes.c_int),
        ("_u", _RKLLMInputUnion),
    ]


class RKLLMInferParam(ctypes.Structure):
    """typedef struct { RKLLMInferMode mode; RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params; int keep_history; } RKLLMInferParam;"""

    _fields_ = [
        ("mode", ctypes.c_int),
        ("lora_params", ctypes.POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", ctypes.POINTER(RKLLMPromptCacheParam)),
        ("keep_history", ctypes.c_int),
    ]


class RKLLMResultLogits(ctypes.Structure):
    """typedef struct { const float* logits; int vocab_size; int num_tokens; } RKLLMResultLogits;"""

    _fields_ = [
        ("logits", ctypes.POINTER(ctypes.c_float)),
        ("vocab_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]


class RKLLMPerfStat(ctypes.Structure):
    """typedef struct { float prefill_time_ms; int prefill_tokens; float generate_time_ms;
    int generate_tokens; float memory_usage_mb; } RKLLMPerfStat;  (1.2.1+)"""

    _fields_ = [
        ("prefill_time_ms", ctypes.c_float),
        ("prefill_tokens", ctypes.c_int),
        ("generate_time_ms", ctypes.c_float),
        ("generate_tokens", ctypes.c_int),
        ("memory_usage_mb", ctypes.c_float),
    ]


class RKLLMResult_1_2_0(ctypes.Structure):
    """typedef struct { const char* text; int32_t token_id; RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits; } RKLLMResult;  (1.2.0)"""

    _fields_ = [
        ("text", ctypes.c_char_p),
        ("token_id", ctypes.c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
    ]


class RKLLMResult(ctypes.Structure):
    """RKLLMResult of 1.2.1+: adds ``RKLLMPerfStat perf``."""

    _fields_ = [
        ("text", ctypes.c_char_p),
        ("token_id", ctypes.c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),
    ]


class RKLLMCrossAttnParam(ctypes.Structure):
    """typedef struct { float* encoder_k_cache; float* encoder_v_cache; float* encoder_mask;
    int32_t* encoder_pos; int num_tokens; } RKLLMCrossAttnParam;  (1.2.1+)"""

    _fields_ = [
        ("encoder_k_cache", ctypes.POINTER(ctypes.c_float)),
        ("encoder_v_cache", ctypes.POINTER(ctypes.c_float)),
        ("encoder_mask", ctypes.POINTER(ctypes.c_float)),
        ("encoder_pos", ctypes.POINTER(ctypes.c_int32)),
        ("num_tokens", ctypes.c_int),
    ]


# typedef void(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);  (1.2.0)
LLMResultCallback_1_2_0 = ctypes.CFUNCTYPE(None, ctypes.POINTER(RKLLMResult_1_2_0), ctypes.c_void_p, ctypes.c_int)
# typedef int(*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);  (1.2.1+)
LLMResultCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(RKLLMResult), ctypes.c_void_p, ctypes.c_int)

RKLLMParamReturn_1_2_0 = param_return_type(RKLLMParam_1_2_0)
RKLLMParamReturn = param_return_type(RKLLMParam)


def bind_chat_template(lib: ctypes.CDLL) -> None:
    # int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt, const char* prompt_prefix,
    #                             const char* prompt_postfix);
    lib.rkllm_set_chat_template.argtypes = [LLMHandle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.rkllm_set_chat_template.restype = ctypes.c_int


def bind_1_2_0(lib: ctypes.CDLL) -> None:
    """Declare the 1.2.0 prototypes on ``lib``."""
    bind_common(lib, RKLLMParamReturn_1_2_0)
    bind_run(lib, RKLLMInput_1_2_0, RKLLMInferParam)
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    lib.rkllm_init.argtypes = [ctypes.POINTER(LLMHandle), ctypes.POINTER(RKLLMParam_1_2_0), LLMResultCallback_1_2_0]
    lib.rkllm_init.restype = ctypes.c_int
    # int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt);
    lib.rkllm_clear_kv_cache.argtypes = [LLMHandle, ctypes.c_int]
    lib.rkllm_clear_kv_cache.restype = ctypes.c_int
    bind_chat_template(lib)


def bind_1_2_1_extras(lib: ctypes.CDLL) -> None:
    """Functions added in 1.2.1 and unchanged in 1.3.0 (rkllm_init is bound by the caller)."""
    # int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int* start_pos, int* end_pos);
    lib.rkllm_clear_kv_cache.argtypes = [LLMHandle, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                         ctypes.POINTER(ctypes.c_int)]
    lib.rkllm_clear_kv_cache.restype = ctypes.c_int
    # int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes);
    lib.rkllm_get_kv_cache_size.argtypes = [LLMHandle, ctypes.POINTER(ctypes.c_int)]
    lib.rkllm_get_kv_cache_size.restype = ctypes.c_int
    bind_chat_template(lib)
    # int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt, const char* tools,
    #                              const char* tool_response_str);
    lib.rkllm_set_function_tools.argtypes = [LLMHandle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.rkllm_set_function_tools.restype = ctypes.c_int
    # int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam* cross_attn_params);
    lib.rkllm_set_cross_attn_params.argtypes = [LLMHandle, ctypes.POINTER(RKLLMCrossAttnParam)]
    lib.rkllm_set_cross_attn_params.restype = ctypes.c_int


def bind_1_2_1(lib: ctypes.CDLL) -> None:
    """Declare the 1.2.1-1.2.3 prototypes on ``lib``."""
    bind_common(lib, RKLLMParamReturn)
    bind_run(lib, RKLLMInput, RKLLMInferParam)
    # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
    lib.rkllm_init.argtypes = [ctypes.POINTER(LLMHandle), ctypes.POINTER(RKLLMParam), LLMResultCallback]
    lib.rkllm_init.restype = ctypes.c_int
    bind_1_2_1_extras(lib)


SYMBOLS_1_2_0 = BASE_SYMBOLS + ("rkllm_clear_kv_cache", "rkllm_set_chat_template")
SYMBOLS_1_2_1 = SYMBOLS_1_2_0 + ("rkllm_get_kv_cache_size", "rkllm_set_function_tools",
                                 "rkllm_set_cross_attn_params")

ABI_1_2_0 = Abi(
    name="1.2.0",
    releases=("1.2.0", "1.2.1b1"),
    RKLLMParam=RKLLMParam_1_2_0,
    RKLLMInput=RKLLMInput_1_2_0,
    RKLLMInferParam=RKLLMInferParam,
    RKLLMResult=RKLLMResult_1_2_0,
    LLMResultCallback=LLMResultCallback_1_2_0,
    structs=(RKLLMExtendParam_1_2_0, RKLLMParam_1_2_0, RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput,
             RKLLMMultiModalInput_1_2_0, RKLLMInput_1_2_0, RKLLMLoraParam, RKLLMPromptCacheParam,
             RKLLMInferParam, RKLLMResultLastHiddenLayer, RKLLMResultLogits, RKLLMResult_1_2_0),
    bind=bind_1_2_0,
    symbols=SYMBOLS_1_2_0,
    callback_returns_int=False,
    init_takes_callback_struct=False,
    has_keep_history=True,
    has_role=False,
    has_perf=False,
    has_run_overrides=False,
    clear_kv_cache_args=2,
    is_running_busy=0,
)

ABI_1_2_1 = Abi(
    name="1.2.1",
    releases=("1.2.1", "1.2.2", "1.2.3"),
    RKLLMParam=RKLLMParam,
    RKLLMInput=RKLLMInput,
    RKLLMInferParam=RKLLMInferParam,
    RKLLMResult=RKLLMResult,
    LLMResultCallback=LLMResultCallback,
    structs=(RKLLMExtendParam, RKLLMParam, RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput,
             RKLLMMultiModalInput, RKLLMInput, RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMCrossAttnParam,
             RKLLMInferParam, RKLLMResultLastHiddenLayer, RKLLMResultLogits, RKLLMPerfStat, RKLLMResult),
    bind=bind_1_2_1,
    symbols=SYMBOLS_1_2_1,
    callback_returns_int=True,
    init_takes_callback_struct=False,
    has_keep_history=True,
    has_role=True,
    has_perf=True,
    has_run_overrides=False,
    clear_kv_cache_args=4,
    is_running_busy=0,
)
