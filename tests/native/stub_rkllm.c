/*
 * A stand-in for Rockchip's librkllmrt, used by the tests on machines without an NPU.
 *
 * One source, compiled once per C ABI with -DRKLLM_ABI=110 (1.1.x), 120 (1.2.0), 121 (1.2.1-1.2.3)
 * or 130 (1.3.0). The structs below follow the layout of each release's rkllm.h field by field; the
 * exported stub_layout_* functions give sizeof/offsetof of every field so the Python bindings can be
 * checked against what a C compiler makes of the same declarations.
 *
 * Behaviour, configured from the environment when rkllm_init runs:
 *   RKLLM_STUB_REPLY_IDS   comma-separated token ids to emit (default: a fixed 16-token sequence)
 *   RKLLM_STUB_DELAY_MS    delay before each token, in milliseconds (default 0)
 *   RKLLM_STUB_ERROR_AFTER emit the ERROR state after this many tokens (default: never)
 *   RKLLM_STUB_RECORD      JSONL file; every rkllm_run / rkllm_clear_kv_cache appends what it received
 *   RKLLM_STUB_INIT_FAIL   if set, rkllm_init fails like a model the runtime refuses to load
 *   RKLLM_STUB_EMBED_DIM   floats per image token of a multimodal input (the LLM's hidden size; default 8)
 * Tokens come from a worker pthread, as with the real library. rkllm_abort stops a run at the next
 * token; max_new_tokens (from RKLLMParam, or RKLLMInferParam in 1.3) caps the reply; returning 1 from
 * the (1.2.1+) callback pauses the run right after that token.
 *
 * The stub keeps a KV-cache length: a run with keep_history=0 starts from an empty cache, each input
 * token and each emitted token adds one, rkllm_clear_kv_cache empties it; input beyond
 * max_context_len makes rkllm_run return -1. Record lines (JSON objects, one per line):
 *   {"event": "run", "abi", "pid", "handle", "input_type": "token"|"prompt", "token_ids": [..]|null,
 *    "prompt": str|null, "mode", "keep_history": 0|1|null (1.1), "role", "enable_thinking" (1.2.1+),
 *    "infer_max_new_tokens", "sampling": {..}|null (1.3), "kv_len_before", "param": {RKLLMParam values}}
 *   {"event": "clear_kv_cache" | "destroy", "abi", "pid", "handle", "kv_len_before"}
 * A multimodal run ("input_type": "multimodal") records its prompt and "image": {"n_image_tokens",
 * "n_image", "image_width", "image_height" (1.2.1+), "image_start"/"image_end"/"image_content" (1.3; before
 * 1.3 they are RKLLMParam's img_*, recorded in "param"), "embed_floats", "embed_fnv1a" (FNV-1a of the
 * embedding's bytes, hex), "embed_sum"}. Its reply is the configured tokens in an order shuffled by that
 * checksum, so two different embeddings give two different replies and the same one the same reply.
 * A multimodal input takes strlen(prompt) + n_image * n_image_tokens positions of the KV cache.
 *
 * RKLLMInferParam.mode = RKLLM_INFER_GET_LAST_HIDDEN_LAYER (token or prompt input; a prompt's "tokens" are
 * its bytes) generates nothing: like the real library, the run calls back once with the prompt's last
 * hidden layer in RKLLMResult.last_hidden_layer (num_tokens = the prompt's length, embd_size =
 * RKLLM_STUB_EMBED_DIM, text "" and token_id -1; state RKLLM_RUN_GET_LAST_HIDDEN_LAYER on 1.1.x,
 * RKLLM_RUN_NORMAL from 1.2.0), then with RKLLM_RUN_FINISH. The buffer is freed once the callback returns
 * (1.3.0's callback may return 2 to release it, which is the same here). With RKLLM_STUB_RECORD the
 * callback's return value is recorded as {"event": "hidden_layer", ..., "num_tokens", "embd_size",
 * "callback_returned"} (0 for the void callback of 1.1/1.2.0).
 * Hidden state of prompt token t (0-based position, id ids[t]), component j (0 <= j < embd_size):
 *   hidden[t][j] = (float)((ids[t] * 31 + (t + 1) * 17 + j * 7) % 101) / 101.0f - 0.5f
 * (integer arithmetic in 64 bits, ids taken as non-negative), so the vector depends on every token and
 * its position.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef RKLLM_ABI
#error "compile with -DRKLLM_ABI=110, 120, 121 or 130"
#endif

#ifndef STUB_VERSION
#if RKLLM_ABI == 110
#define STUB_VERSION "1.1.4"
#elif RKLLM_ABI == 120
#define STUB_VERSION "1.2.0"
#elif RKLLM_ABI == 121
#define STUB_VERSION "1.2.3"
#else
#define STUB_VERSION "1.3.0"
#endif
#endif

/* Like the real library: the version is a string of its own, printed through a format at init. */
const char rkllm_stub_runtime_version[] = STUB_VERSION;
const char rkllm_stub_marker[] = "RKLLM_STUB librkllmrt test double";
static const char min_driver_version[] = "0.9.7";

/* ------------------------------------------------------------------ rkllm.h, per release */

typedef void* LLMHandle;

typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3,
#if RKLLM_ABI == 110
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4
#endif
} LLMCallState;

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3,
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
#if RKLLM_ABI >= 120
    RKLLM_INFER_GET_LOGITS = 2,
#endif
} RKLLMInferMode;

#if RKLLM_ABI >= 130
typedef int (*LLMGetEmbedCallback)(void* userdata, int32_t* tokens, uint64_t num_tokens, void* embed, uint64_t len);
typedef int (*LLMTokenizerCallback)(void* userdata, const char* text, int32_t text_len, int32_t* tokens,
                                    int32_t n_tokens_max);
#endif

typedef struct {
    int32_t base_domain_id;
#if RKLLM_ABI == 110
    uint8_t reserved[112];
#else
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
#if RKLLM_ABI == 120
    uint8_t reserved[106];
#else
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
#endif
#endif
} RKLLMExtendParam;

typedef struct {
    const char* model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
#if RKLLM_ABI >= 120
    int32_t n_keep;
#endif
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if RKLLM_ABI >= 130
    bool ignore_eos_token;
#endif
    bool is_async;
#if RKLLM_ABI < 130
    const char* img_start;
    const char* img_end;
    const char* img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char* lora_adapter_path;
    const char* lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    float* embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t* input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

typedef struct {
    char* prompt;
#if RKLLM_ABI < 130
    float* image_embed;
    size_t n_image_tokens;
#if RKLLM_ABI >= 121
    size_t n_image;
    size_t image_width;
    size_t image_height;
#endif
#else
    struct {
        float* image_embed;
        size_t n_image_tokens;
        size_t n_image;
        const char* image_start;
        const char* image_end;
        const char* image_content;
        size_t image_width;
        size_t image_height;
    } image;
    struct {
        float* video_embed;
        size_t n_frame_tokens;
        size_t n_frame_per_video;
        size_t n_video;
        const char* video_start;
        const char* video_end;
        const char* video_content;
        size_t frame_width;
        size_t frame_height;
    } video;
#endif
} RKLLMMultiModalInput;

typedef struct {
#if RKLLM_ABI >= 121
    const char* role;
    bool enable_thinking;
#endif
    RKLLMInputType input_type;
    union {
        const char* prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
    };
} RKLLMInput;

typedef struct {
    const char* lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char* prompt_cache_path;
} RKLLMPromptCacheParam;

#if RKLLM_ABI >= 121
typedef struct {
    float* encoder_k_cache;
    float* encoder_v_cache;
    float* encoder_mask;
    int32_t* encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;
#endif

#if RKLLM_ABI >= 130
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;
#endif

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam* lora_params;
    RKLLMPromptCacheParam* prompt_cache_params;
#if RKLLM_ABI >= 130
    RKLLMSamplingParam* sampling_params;
#endif
#if RKLLM_ABI >= 120
    int keep_history;
#endif
#if RKLLM_ABI >= 130
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    const float* hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

#if RKLLM_ABI >= 120
typedef struct {
    const float* logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;
#endif

#if RKLLM_ABI >= 121
typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;
#endif

typedef struct {
    const char* text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
#if RKLLM_ABI >= 120
    RKLLMResultLogits logits;
#endif
#if RKLLM_ABI >= 121
    RKLLMPerfStat perf;
#endif
} RKLLMResult;

#if RKLLM_ABI >= 121
typedef int (*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
#else
typedef void (*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);
#endif

#if RKLLM_ABI >= 130
typedef struct {
    LLMResultCallback result_callback;
    void* result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void* tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void* embed_userdata;
} RKLLMCallback;
#endif

/* ------------------------------------------------------------------ layout export */

typedef struct {
    const char* name;
    long value;
} LayoutEntry;

#define SZ(T) {#T ".sizeof", (long)sizeof(T)}
#define OF(T, f) {#T "." #f, (long)offsetof(T, f)}

static const LayoutEntry layout[] = {
    SZ(RKLLMExtendParam),
    OF(RKLLMExtendParam, base_domain_id),
#if RKLLM_ABI >= 120
    OF(RKLLMExtendParam, embed_flash),
    OF(RKLLMExtendParam, enabled_cpus_num),
    OF(RKLLMExtendParam, enabled_cpus_mask),
#endif
#if RKLLM_ABI >= 121
    OF(RKLLMExtendParam, n_batch),
    OF(RKLLMExtendParam, use_cross_attn),
#endif
    OF(RKLLMExtendParam, reserved),
    SZ(RKLLMParam),
    OF(RKLLMParam, model_path),
    OF(RKLLMParam, max_context_len),
    OF(RKLLMParam, max_new_tokens),
    OF(RKLLMParam, top_k),
#if RKLLM_ABI >= 120
    OF(RKLLMParam, n_keep),
#endif
    OF(RKLLMParam, top_p),
    OF(RKLLMParam, temperature),
    OF(RKLLMParam, repeat_penalty),
    OF(RKLLMParam, frequency_penalty),
    OF(RKLLMParam, presence_penalty),
    OF(RKLLMParam, mirostat),
    OF(RKLLMParam, mirostat_tau),
    OF(RKLLMParam, mirostat_eta),
    OF(RKLLMParam, skip_special_token),
#if RKLLM_ABI >= 130
    OF(RKLLMParam, ignore_eos_token),
#endif
    OF(RKLLMParam, is_async),
#if RKLLM_ABI < 130
    OF(RKLLMParam, img_start),
    OF(RKLLMParam, img_end),
    OF(RKLLMParam, img_content),
#endif
    OF(RKLLMParam, extend_param),
    SZ(RKLLMLoraAdapter),
    OF(RKLLMLoraAdapter, lora_adapter_path),
    OF(RKLLMLoraAdapter, lora_adapter_name),
    OF(RKLLMLoraAdapter, scale),
    SZ(RKLLMEmbedInput),
    OF(RKLLMEmbedInput, embed),
    OF(RKLLMEmbedInput, n_tokens),
    SZ(RKLLMTokenInput),
    OF(RKLLMTokenInput, input_ids),
    OF(RKLLMTokenInput, n_tokens),
    SZ(RKLLMMultiModalInput),
    OF(RKLLMMultiModalInput, prompt),
#if RKLLM_ABI < 130
    OF(RKLLMMultiModalInput, image_embed),
    OF(RKLLMMultiModalInput, n_image_tokens),
#if RKLLM_ABI >= 121
    OF(RKLLMMultiModalInput, n_image),
    OF(RKLLMMultiModalInput, image_width),
    OF(RKLLMMultiModalInput, image_height),
#endif
#else
    OF(RKLLMMultiModalInput, image),
    OF(RKLLMMultiModalInput, image.image_embed),
    OF(RKLLMMultiModalInput, image.n_image_tokens),
    OF(RKLLMMultiModalInput, image.n_image),
    OF(RKLLMMultiModalInput, image.image_start),
    OF(RKLLMMultiModalInput, image.image_end),
    OF(RKLLMMultiModalInput, image.image_content),
    OF(RKLLMMultiModalInput, image.image_width),
    OF(RKLLMMultiModalInput, image.image_height),
    OF(RKLLMMultiModalInput, video),
    OF(RKLLMMultiModalInput, video.video_embed),
    OF(RKLLMMultiModalInput, video.n_frame_tokens),
    OF(RKLLMMultiModalInput, video.n_frame_per_video),
    OF(RKLLMMultiModalInput, video.n_video),
    OF(RKLLMMultiModalInput, video.video_start),
    OF(RKLLMMultiModalInput, video.video_end),
    OF(RKLLMMultiModalInput, video.video_content),
    OF(RKLLMMultiModalInput, video.frame_width),
    OF(RKLLMMultiModalInput, video.frame_height),
#endif
    SZ(RKLLMInput),
#if RKLLM_ABI >= 121
    OF(RKLLMInput, role),
    OF(RKLLMInput, enable_thinking),
#endif
    OF(RKLLMInput, input_type),
    OF(RKLLMInput, prompt_input),
    OF(RKLLMInput, embed_input),
    OF(RKLLMInput, token_input),
    OF(RKLLMInput, multimodal_input),
    SZ(RKLLMLoraParam),
    OF(RKLLMLoraParam, lora_adapter_name),
    SZ(RKLLMPromptCacheParam),
    OF(RKLLMPromptCacheParam, save_prompt_cache),
    OF(RKLLMPromptCacheParam, prompt_cache_path),
#if RKLLM_ABI >= 121
    SZ(RKLLMCrossAttnParam),
    OF(RKLLMCrossAttnParam, encoder_k_cache),
    OF(RKLLMCrossAttnParam, encoder_v_cache),
    OF(RKLLMCrossAttnParam, encoder_mask),
    OF(RKLLMCrossAttnParam, encoder_pos),
    OF(RKLLMCrossAttnParam, num_tokens),
#endif
#if RKLLM_ABI >= 130
    SZ(RKLLMSamplingParam),
    OF(RKLLMSamplingParam, top_k),
    OF(RKLLMSamplingParam, top_p),
    OF(RKLLMSamplingParam, temperature),
    OF(RKLLMSamplingParam, repeat_penalty),
    OF(RKLLMSamplingParam, frequency_penalty),
    OF(RKLLMSamplingParam, presence_penalty),
    OF(RKLLMSamplingParam, mirostat),
    OF(RKLLMSamplingParam, mirostat_tau),
    OF(RKLLMSamplingParam, mirostat_eta),
#endif
    SZ(RKLLMInferParam),
    OF(RKLLMInferParam, mode),
    OF(RKLLMInferParam, lora_params),
    OF(RKLLMInferParam, prompt_cache_params),
#if RKLLM_ABI >= 130
    OF(RKLLMInferParam, sampling_params),
#endif
#if RKLLM_ABI >= 120
    OF(RKLLMInferParam, keep_history),
#endif
#if RKLLM_ABI >= 130
    OF(RKLLMInferParam, max_new_tokens),
#endif
    SZ(RKLLMResultLastHiddenLayer),
    OF(RKLLMResultLastHiddenLayer, hidden_states),
    OF(RKLLMResultLastHiddenLayer, embd_size),
    OF(RKLLMResultLastHiddenLayer, num_tokens),
#if RKLLM_ABI >= 120
    SZ(RKLLMResultLogits),
    OF(RKLLMResultLogits, logits),
    OF(RKLLMResultLogits, vocab_size),
    OF(RKLLMResultLogits, num_tokens),
#endif
#if RKLLM_ABI >= 121
    SZ(RKLLMPerfStat),
    OF(RKLLMPerfStat, prefill_time_ms),
    OF(RKLLMPerfStat, prefill_tokens),
    OF(RKLLMPerfStat, generate_time_ms),
    OF(RKLLMPerfStat, generate_tokens),
    OF(RKLLMPerfStat, memory_usage_mb),
#endif
    SZ(RKLLMResult),
    OF(RKLLMResult, text),
    OF(RKLLMResult, token_id),
    OF(RKLLMResult, last_hidden_layer),
#if RKLLM_ABI >= 120
    OF(RKLLMResult, logits),
#endif
#if RKLLM_ABI >= 121
    OF(RKLLMResult, perf),
#endif
#if RKLLM_ABI >= 130
    SZ(RKLLMCallback),
    OF(RKLLMCallback, result_callback),
    OF(RKLLMCallback, result_userdata),
    OF(RKLLMCallback, tokenizer_callback),
    OF(RKLLMCallback, tokenizer_userdata),
    OF(RKLLMCallback, embed_callback),
    OF(RKLLMCallback, embed_userdata),
#endif
};

int stub_layout_count(void) { return (int)(sizeof(layout) / sizeof(layout[0])); }
const char* stub_layout_name(int i) { return (i >= 0 && i < stub_layout_count()) ? layout[i].name : NULL; }
long stub_layout_value(int i) { return (i >= 0 && i < stub_layout_count()) ? layout[i].value : -1; }
int stub_abi(void) { return RKLLM_ABI; }

/* ------------------------------------------------------------------ the fake runtime */

static const int32_t default_reply[] = {1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008,
                                        1009, 1010, 1011, 1012, 1013, 1014, 1015, 1016};

typedef struct {
    /* what the current run received (copied, the caller's buffers are not ours) */
    int input_type;
    int32_t* ids;
    size_t n_ids;
    int keep_history;
    int32_t max_new_tokens;
    int paused;
    uint64_t embed_fnv1a; /* multimodal: checksum of the image embedding, 0 otherwise */
    int hidden;           /* RKLLM_INFER_GET_LAST_HIDDEN_LAYER: answer the prompt's hidden states */
} Job;

typedef struct {
    RKLLMParam param;
    char* model_path;
    LLMResultCallback callback;
    void* default_userdata;
    void* run_userdata;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t worker;
    bool worker_joinable;
    bool running;
    bool abort_requested;
    long kv_len;
    Job job;
    /* configuration from the environment */
    int32_t* reply;
    size_t n_reply;
    long delay_ms;
    long error_after;
    char* record_path;
    long embed_dim;
} Stub;

static void stub_log(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

static void parse_reply(Stub* s, const char* spec) {
    if (spec == NULL || *spec == '\0') {
        s->n_reply = sizeof(default_reply) / sizeof(default_reply[0]);
        s->reply = malloc(sizeof(default_reply));
        memcpy(s->reply, default_reply, sizeof(default_reply));
        return;
    }
    size_t cap = 1;
    for (const char* p = spec; *p; p++) cap += (*p == ',');
    s->reply = calloc(cap, sizeof(int32_t));
    s->n_reply = 0;
    const char* p = spec;
    while (*p) {
        char* end = NULL;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        s->reply[s->n_reply++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
}

static long env_long(const char* name, long fallback) {
    const char* v = getenv(name);
    return (v && *v) ? strtol(v, NULL, 10) : fallback;
}

/* ---- JSONL recording: one record per line, written with a single append under flock */

typedef struct {
    char* buf;
    size_t len, cap;
} Str;

static void str_add(Str* s, const char* fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int need = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (s->buf && (size_t)need < s->cap - s->len) {
            s->len += (size_t)need;
            return;
        }
        s->cap = (s->cap + (size_t)need + 1) * 2;
        s->buf = realloc(s->buf, s->cap);
    }
}

static void str_json_string(Str* s, const char* text) {
    if (text == NULL) {
        str_add(s, "null");
        return;
    }
    str_add(s, "\"");
    for (const unsigned char* p = (const unsigned char*)text; *p; p++) {
        if (*p == '"' || *p == '\\') str_add(s, "\\%c", *p);
        else if (*p < 0x20) str_add(s, "\\u%04x", *p);
        else str_add(s, "%c", *p);
    }
    str_add(s, "\"");
}

static void record_write(Stub* s, Str* line) {
    if (s->record_path == NULL) return;
    str_add(line, "\n");
    int fd = open(s->record_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        stub_log("E rkllm-stub: cannot open record file %s: %s\n", s->record_path, strerror(errno));
        return;
    }
    flock(fd, LOCK_EX);
    ssize_t w = write(fd, line->buf, line->len);
    (void)w;
    flock(fd, LOCK_UN);
    close(fd);
}

static void record_params(Str* r, const RKLLMParam* p) {
    str_add(r, "\"param\": {\"max_context_len\": %d, \"max_new_tokens\": %d, \"top_k\": %d, ", p->max_context_len,
            p->max_new_tokens, p->top_k);
    str_add(r, "\"top_p\": %.6g, \"temperature\": %.6g, \"repeat_penalty\": %.6g, ", p->top_p, p->temperature,
            p->repeat_penalty);
    str_add(r, "\"frequency_penalty\": %.6g, \"presence_penalty\": %.6g, \"mirostat\": %d, ", p->frequency_penalty,
            p->presence_penalty, p->mirostat);
    str_add(r, "\"skip_special_token\": %s, \"is_async\": %s, ", p->skip_special_token ? "true" : "false",
            p->is_async ? "true" : "false");
#if RKLLM_ABI >= 120
    str_add(r, "\"n_keep\": %d, \"embed_flash\": %d, \"enabled_cpus_num\": %d, \"enabled_cpus_mask\": %u, ", p->n_keep,
            p->extend_param.embed_flash, p->extend_param.enabled_cpus_num, p->extend_param.enabled_cpus_mask);
#endif
#if RKLLM_ABI >= 121
    str_add(r, "\"n_batch\": %d, ", p->extend_param.n_batch);
#endif
#if RKLLM_ABI >= 130
    str_add(r, "\"ignore_eos_token\": %s, ", p->ignore_eos_token ? "true" : "false");
#endif
#if RKLLM_ABI < 130
    str_add(r, "\"img_start\": ");
    str_json_string(r, p->img_start);
    str_add(r, ", \"img_end\": ");
    str_json_string(r, p->img_end);
    str_add(r, ", \"img_content\": ");
    str_json_string(r, p->img_content);
    str_add(r, ", ");
#endif
    str_add(r, "\"base_domain_id\": %d}", p->extend_param.base_domain_id);
}

/* The image part of a multimodal input, per release. */
typedef struct {
    const float* embed;
    size_t n_image_tokens, n_image, width, height;
} ImageView;

static ImageView image_view(const RKLLMMultiModalInput* m) {
    ImageView v = {0};
#if RKLLM_ABI >= 130
    v.embed = m->image.image_embed;
    v.n_image_tokens = m->image.n_image_tokens;
    v.n_image = m->image.n_image;
    v.width = m->image.image_width;
    v.height = m->image.image_height;
#else
    v.embed = m->image_embed;
    v.n_image_tokens = m->n_image_tokens;
#if RKLLM_ABI >= 121
    v.n_image = m->n_image;
    v.width = m->image_width;
    v.height = m->image_height;
#else
    v.n_image = 1; /* one image per input before 1.2.1 */
#endif
#endif
    return v;
}

static size_t image_floats(const Stub* s, ImageView v) { return v.n_image * v.n_image_tokens * (size_t)s->embed_dim; }

static uint64_t fnv1a(const void* data, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    const unsigned char* p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void record_image(Str* r, const Stub* s, const RKLLMMultiModalInput* m) {
    ImageView v = image_view(m);
    size_t n = v.embed ? image_floats(s, v) : 0;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += v.embed[i];
    str_add(r, ", \"image\": {\"n_image_tokens\": %zu, \"n_image\": %zu, \"image_width\": %zu, "
            "\"image_height\": %zu, \"embed_floats\": %zu, \"embed_fnv1a\": \"%016llx\", \"embed_sum\": %.9g",
            v.n_image_tokens, v.n_image, v.width, v.height, n,
            (unsigned long long)(v.embed ? fnv1a(v.embed, n * sizeof(float)) : 0), sum);
#if RKLLM_ABI >= 130
    str_add(r, ", \"image_start\": ");
    str_json_string(r, m->image.image_start);
    str_add(r, ", \"image_end\": ");
    str_json_string(r, m->image.image_end);
    str_add(r, ", \"image_content\": ");
    str_json_string(r, m->image.image_content);
#endif
    str_add(r, "}");
}

static void record_run(Stub* s, const RKLLMInput* in, const RKLLMInferParam* ip, long kv_before) {
    if (s->record_path == NULL) return;
    Str r = {0};
    static const char* kinds[] = {"prompt", "token", "embed", "multimodal"};
    int t = (int)in->input_type;
    str_add(&r, "{\"event\": \"run\", \"abi\": %d, \"pid\": %d, \"handle\": \"%p\", ", RKLLM_ABI, (int)getpid(),
            (void*)s);
    str_add(&r, "\"input_type\": \"%s\", ", (t >= 0 && t < 4) ? kinds[t] : "unknown");
    str_add(&r, "\"token_ids\": ");
    if (t == RKLLM_INPUT_TOKEN) {
        str_add(&r, "[");
        for (size_t i = 0; i < in->token_input.n_tokens; i++)
            str_add(&r, i ? ", %d" : "%d", in->token_input.input_ids[i]);
        str_add(&r, "]");
    } else {
        str_add(&r, "null");
    }
    str_add(&r, ", \"prompt\": ");
    str_json_string(&r, t == RKLLM_INPUT_PROMPT ? in->prompt_input
                        : t == RKLLM_INPUT_MULTIMODAL ? in->multimodal_input.prompt : NULL);
    if (t == RKLLM_INPUT_MULTIMODAL) record_image(&r, s, &in->multimodal_input);
#if RKLLM_ABI >= 121
    str_add(&r, ", \"role\": ");
    str_json_string(&r, in->role);
    str_add(&r, ", \"enable_thinking\": %s", in->enable_thinking ? "true" : "false");
#endif
    str_add(&r, ", \"mode\": %d", ip ? (int)ip->mode : -1);
#if RKLLM_ABI >= 120
    str_add(&r, ", \"keep_history\": %d", ip ? ip->keep_history : 0);
#else
    str_add(&r, ", \"keep_history\": null");
#endif
#if RKLLM_ABI >= 130
    str_add(&r, ", \"infer_max_new_tokens\": %d, \"sampling\": ", ip ? ip->max_new_tokens : 0);
    if (ip && ip->sampling_params) {
        const RKLLMSamplingParam* sp = ip->sampling_params;
        str_add(&r, "{\"top_k\": %d, \"top_p\": %.6g, \"temperature\": %.6g, \"repeat_penalty\": %.6g, ", sp->top_k,
                sp->top_p, sp->temperature, sp->repeat_penalty);
        str_add(&r, "\"frequency_penalty\": %.6g, \"presence_penalty\": %.6g}", sp->frequency_penalty,
                sp->presence_penalty);
    } else {
        str_add(&r, "null");
    }
#endif
    str_add(&r, ", \"kv_len_before\": %ld, ", kv_before);
    record_params(&r, &s->param);
    str_add(&r, "}");
    record_write(s, &r);
    free(r.buf);
}

static void record_event(Stub* s, const char* event, long kv_before) {
    if (s->record_path == NULL) return;
    Str r = {0};
    str_add(&r, "{\"event\": \"%s\", \"abi\": %d, \"pid\": %d, \"handle\": \"%p\", \"kv_len_before\": %ld}", event,
            RKLLM_ABI, (int)getpid(), (void*)s, kv_before);
    record_write(s, &r);
    free(r.buf);
}

/* ---- the worker thread */

/* Waits up to ms milliseconds; returns early (true) when an abort is requested. Caller holds mu. */
static bool wait_abortable(Stub* s, long ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    while (!s->abort_requested) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT) break;
    }
    return s->abort_requested;
}

static int deliver(Stub* s, RKLLMResult* result, LLMCallState state) {
#if RKLLM_ABI >= 121
    return s->callback(result, s->run_userdata, state);
#else
    s->callback(result, s->run_userdata, state);
    return 0;
#endif
}

static float hidden_state(int32_t id, size_t position, size_t component) {
    long long v = (long long)(id < 0 ? -(long long)id : id) * 31 + (long long)(position + 1) * 17 +
                  (long long)component * 7;
    return (float)(v % 101) / 101.0f - 0.5f;
}

/* A RKLLM_INFER_GET_LAST_HIDDEN_LAYER run: one callback with the hidden states, then FINISH. */
static void hidden_run(Stub* s, Job* job) {
    pthread_mutex_lock(&s->mu);
    bool aborted = s->delay_ms > 0 ? wait_abortable(s, s->delay_ms) : s->abort_requested;
    pthread_mutex_unlock(&s->mu);
    if (aborted) return;
    size_t dim = (size_t)(s->embed_dim > 0 ? s->embed_dim : 1);
    float* states = malloc((job->n_ids ? job->n_ids : 1) * dim * sizeof(float));
    for (size_t t = 0; t < job->n_ids; t++)
        for (size_t j = 0; j < dim; j++) states[t * dim + j] = hidden_state(job->ids[t], t, j);
    RKLLMResult result;
    memset(&result, 0, sizeof(result));
    result.text = "";
    result.token_id = -1;
    result.last_hidden_layer.hidden_states = states;
    result.last_hidden_layer.embd_size = (int)dim;
    result.last_hidden_layer.num_tokens = (int)job->n_ids;
#if RKLLM_ABI == 110
    int ret = deliver(s, &result, RKLLM_RUN_GET_LAST_HIDDEN_LAYER);
#else
    int ret = deliver(s, &result, RKLLM_RUN_NORMAL);
#endif
    free(states); /* after the callback either way; 1.3's return value 2 asks for exactly this */
    if (s->record_path != NULL) {
        Str r = {0};
        str_add(&r, "{\"event\": \"hidden_layer\", \"abi\": %d, \"pid\": %d, \"handle\": \"%p\", "
                "\"num_tokens\": %zu, \"embd_size\": %zu, \"callback_returned\": %d}", RKLLM_ABI, (int)getpid(),
                (void*)s, job->n_ids, dim, ret);
        record_write(s, &r);
        free(r.buf);
    }
    memset(&result, 0, sizeof(result));
    result.token_id = -1;
#if RKLLM_ABI >= 121
    result.perf.prefill_tokens = (int)job->n_ids;
    result.perf.prefill_time_ms = 1.0f + 0.1f * (float)job->n_ids;
    result.perf.memory_usage_mb = 42.0f;
#endif
    deliver(s, &result, RKLLM_RUN_FINISH);
}

static void* worker_main(void* arg) {
    Stub* s = arg;
    Job* job = &s->job;
    if (job->hidden) {
        hidden_run(s, job);
        pthread_mutex_lock(&s->mu);
        s->running = false;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return NULL;
    }
    RKLLMResult result;
    char text[32];
    size_t limit = s->n_reply;
    if (job->max_new_tokens > 0 && (size_t)job->max_new_tokens < limit) limit = (size_t)job->max_new_tokens;
    bool stopped = false;
    size_t produced = 0;
    size_t* order = malloc((s->n_reply ? s->n_reply : 1) * sizeof(size_t));
    for (size_t i = 0; i < s->n_reply; i++) order[i] = i;
    if (job->embed_fnv1a) { /* the reply depends on the image: a Fisher-Yates shuffle seeded by its checksum */
        uint64_t x = job->embed_fnv1a;
        for (size_t i = s->n_reply; i > 1; i--) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t j = (size_t)(x % i), tmp = order[i - 1];
            order[i - 1] = order[j];
            order[j] = tmp;
        }
    }
    for (size_t i = 0; i < limit && !stopped; i++) {
        pthread_mutex_lock(&s->mu);
        bool aborted = s->delay_ms > 0 ? wait_abortable(s, s->delay_ms) : s->abort_requested;
        pthread_mutex_unlock(&s->mu);
        if (aborted) {
            stopped = true;
            break;
        }
        if (s->error_after >= 0 && (long)i == s->error_after) {
            stub_log("E rkllm: stub error mode: failing after %ld tokens\n", s->error_after);
            deliver(s, NULL, RKLLM_RUN_ERROR);
            stopped = true;
            break;
        }
        memset(&result, 0, sizeof(result));
        int32_t token = s->reply[order[i]];
        snprintf(text, sizeof(text), "<%d>", token);
        result.text = text;
        result.token_id = token;
        int ret = deliver(s, &result, RKLLM_RUN_NORMAL);
        produced++;
        s->kv_len++;
        if (ret == 1) {  /* 1.2.1+: the caller paused the run */
            job->paused = 1;
            stopped = true;
        }
    }
    if (!stopped) {
        memset(&result, 0, sizeof(result));
        result.token_id = -1;
#if RKLLM_ABI >= 121
        result.perf.prefill_tokens = (int)job->n_ids;
        result.perf.prefill_time_ms = 1.0f + 0.1f * (float)job->n_ids;
        result.perf.generate_tokens = (int)produced;
        result.perf.generate_time_ms = 2.0f * (float)produced;
        result.perf.memory_usage_mb = 42.0f;
#endif
        deliver(s, &result, RKLLM_RUN_FINISH);
    }
    free(order);
    pthread_mutex_lock(&s->mu);
    s->running = false;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ the C API */

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof(p));
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 1;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
    p.is_async = false;
#if RKLLM_ABI >= 120
    p.n_keep = -1;
#endif
#if RKLLM_ABI >= 121
    p.extend_param.n_batch = 1;
#endif
    return p;
}

static int init_common(LLMHandle* handle, RKLLMParam* param, LLMResultCallback cb, void* default_userdata) {
    if (handle == NULL || param == NULL || cb == NULL) return -1;
    stub_log("I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: %s\n",
             rkllm_stub_runtime_version, "stub", "STUB");
    if (getenv("RKLLM_STUB_WARN_DRIVER"))
        stub_log("W rkllm: Warning: Your rknpu driver version is too low, please upgrade to %s\n", min_driver_version);
    struct stat st;
    if (param->model_path == NULL || stat(param->model_path, &st) != 0 || !S_ISREG(st.st_mode)) {
        stub_log("E rkllm: load model file error! (%s)\n", param->model_path ? param->model_path : "(null)");
        return -1;
    }
    if (getenv("RKLLM_STUB_INIT_FAIL")) {
        stub_log("E RKNN: invalid rknn llm model magic\n");
        return -1;
    }
    Stub* s = calloc(1, sizeof(Stub));
    s->param = *param;
    s->model_path = strdup(param->model_path);
    s->param.model_path = s->model_path;
    s->callback = cb;
    s->default_userdata = default_userdata;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    parse_reply(s, getenv("RKLLM_STUB_REPLY_IDS"));
    s->delay_ms = env_long("RKLLM_STUB_DELAY_MS", 0);
    s->error_after = env_long("RKLLM_STUB_ERROR_AFTER", -1);
    s->embed_dim = env_long("RKLLM_STUB_EMBED_DIM", 8);
    const char* rec = getenv("RKLLM_STUB_RECORD");
    s->record_path = (rec && *rec) ? strdup(rec) : NULL;
    *handle = s;
    return 0;
}

#if RKLLM_ABI >= 130
int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback) {
    if (callback == NULL) return -1;
    return init_common(handle, param, callback->result_callback, callback->result_userdata);
}
#else
int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback) {
    return init_common(handle, param, callback, NULL);
}
#endif

static void join_worker(Stub* s) {
    if (s->worker_joinable) {
        pthread_join(s->worker, NULL);
        s->worker_joinable = false;
    }
}

static int start_run(Stub* s, RKLLMInput* in, RKLLMInferParam* ip, void* userdata, bool wait) {
    if (s == NULL || in == NULL) return -1;
    pthread_mutex_lock(&s->mu);
    if (s->running) {
        pthread_mutex_unlock(&s->mu);
        stub_log("E rkllm: a run is already in progress on this handle\n");
        return -1;
    }
    pthread_mutex_unlock(&s->mu);
    join_worker(s);

    long kv_before = s->kv_len;
    record_run(s, in, ip, kv_before);
    Job* job = &s->job;
    free(job->ids);
    memset(job, 0, sizeof(*job));
    job->input_type = (int)in->input_type;
    if (in->input_type == RKLLM_INPUT_TOKEN) {
        job->n_ids = in->token_input.n_tokens;
        job->ids = malloc((job->n_ids ? job->n_ids : 1) * sizeof(int32_t));
        if (job->n_ids) memcpy(job->ids, in->token_input.input_ids, job->n_ids * sizeof(int32_t));
    } else if (in->input_type == RKLLM_INPUT_PROMPT) {
        job->n_ids = in->prompt_input ? strlen(in->prompt_input) : 0;  /* one "token" per byte */
        job->ids = malloc((job->n_ids ? job->n_ids : 1) * sizeof(int32_t));
        for (size_t i = 0; i < job->n_ids; i++) job->ids[i] = (unsigned char)in->prompt_input[i];
    } else if (in->input_type == RKLLM_INPUT_MULTIMODAL) {
        const RKLLMMultiModalInput* m = &in->multimodal_input;
        ImageView v = image_view(m);
        if (m->prompt == NULL || v.embed == NULL || v.n_image == 0 || v.n_image_tokens == 0) {
            stub_log("E rkllm: multimodal input without prompt or image embedding\n");
            return -1;
        }
        job->n_ids = strlen(m->prompt) + v.n_image * v.n_image_tokens;
        job->embed_fnv1a = fnv1a(v.embed, image_floats(s, v) * sizeof(float));
        if (job->embed_fnv1a == 0) job->embed_fnv1a = 1;
    } else {
        stub_log("E rkllm: the stub implements prompt, token and multimodal input, not embed\n");
        return -1;
    }
    job->hidden = ip != NULL && ip->mode == RKLLM_INFER_GET_LAST_HIDDEN_LAYER;
    if (job->hidden && job->input_type == RKLLM_INPUT_MULTIMODAL) {
        stub_log("E rkllm: the stub gives hidden states of token and prompt input only\n");
        return -1;
    }
#if RKLLM_ABI >= 120
    job->keep_history = ip ? ip->keep_history : 0;
#endif
    if (!job->keep_history) s->kv_len = 0;
    job->max_new_tokens = s->param.max_new_tokens;
#if RKLLM_ABI >= 130
    if (ip && ip->max_new_tokens > 0) job->max_new_tokens = ip->max_new_tokens;
#endif
    if (s->kv_len + (long)job->n_ids > s->param.max_context_len) {
        stub_log("E rkllm: the input (%zu tokens, %ld in the kv cache) exceeds max_context_len %d\n", job->n_ids,
                 s->kv_len, s->param.max_context_len);
        s->kv_len = 0;
        return -1;
    }
    s->kv_len += (long)job->n_ids;
    s->run_userdata = userdata ? userdata : s->default_userdata;

    pthread_mutex_lock(&s->mu);
    s->abort_requested = false;
    s->running = true;
    pthread_mutex_unlock(&s->mu);
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) {
        s->running = false;
        return -1;
    }
    s->worker_joinable = true;
    if (wait) join_worker(s);
    return 0;
}

int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params, void* userdata) {
    return start_run(handle, rkllm_input, rkllm_infer_params, userdata, true);
}

int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params, void* userdata) {
    return start_run(handle, rkllm_input, rkllm_infer_params, userdata, false);
}

int rkllm_abort(LLMHandle handle) {
    Stub* s = handle;
    if (s == NULL) return -1;
    pthread_mutex_lock(&s->mu);
    s->abort_requested = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int rkllm_is_running(LLMHandle handle) {
    Stub* s = handle;
    if (s == NULL) return -1;
    pthread_mutex_lock(&s->mu);
    bool running = s->running;
    pthread_mutex_unlock(&s->mu);
#if RKLLM_ABI >= 130
    return running ? 1 : 0; /* 1.3.0 documents "1 if a task is running" */
#else
    return running ? 0 : 1; /* earlier headers document "0 if a task is running" */
#endif
}

int rkllm_destroy(LLMHandle handle) {
    Stub* s = handle;
    if (s == NULL) return -1;
    rkllm_abort(s);
    join_worker(s);
    record_event(s, "destroy", s->kv_len);
    free(s->job.ids);
    free(s->reply);
    free(s->record_path);
    free(s->model_path);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return 0;
}

int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter) {
    if (handle == NULL || lora_adapter == NULL || lora_adapter->lora_adapter_path == NULL) return -1;
    return access(lora_adapter->lora_adapter_path, R_OK) == 0 ? 0 : -1;
}

int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path) {
    if (handle == NULL || prompt_cache_path == NULL) return -1;
    return access(prompt_cache_path, R_OK) == 0 ? 0 : -1;
}

int rkllm_release_prompt_cache(LLMHandle handle) { return handle ? 0 : -1; }

#if RKLLM_ABI == 120
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt) {
    Stub* s = handle;
    (void)keep_system_prompt;
    if (s == NULL) return -1;
    record_event(s, "clear_kv_cache", s->kv_len);
    s->kv_len = 0;
    return 0;
}
#elif RKLLM_ABI >= 121
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int* start_pos, int* end_pos) {
    Stub* s = handle;
    (void)keep_system_prompt;
    if (s == NULL) return -1;
    record_event(s, "clear_kv_cache", s->kv_len);
    if (start_pos && end_pos && start_pos[0] < end_pos[0]) {
        long n = (long)(end_pos[0] - start_pos[0]);
        s->kv_len = s->kv_len > n ? s->kv_len - n : 0;
    } else {
        s->kv_len = 0;
    }
    return 0;
}

int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes) {
    Stub* s = handle;
    if (s == NULL || cache_sizes == NULL) return -1;
    cache_sizes[0] = (int)s->kv_len;
    return 0;
}

int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt, const char* tools,
                             const char* tool_response_str) {
    (void)system_prompt;
    (void)tools;
    (void)tool_response_str;
    return handle ? 0 : -1;
}

int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam* cross_attn_params) {
    return (handle && cross_attn_params) ? 0 : -1;
}
#endif

#if RKLLM_ABI >= 120
int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt, const char* prompt_prefix,
                            const char* prompt_postfix) {
    (void)system_prompt;
    (void)prompt_prefix;
    (void)prompt_postfix;
    return handle ? 0 : -1;
}
#endif
