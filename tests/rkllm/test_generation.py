"""Generation through every ABI on the gcc-built stub: tokens, limits, abort, errors, handle lifetime."""

from __future__ import annotations

import threading

import pytest

from rkllama_bridge.runtimes.base import GenerationFailed, GenerationParams, ModelLoadError

from .conftest import EOS, read_records

REPLY = [501, 502, 503, 504, 505, 506, 507, 508]
LONG = list(range(1000, 1000 + 5000))  # far more than any test lets run
DEADLINE_S = 20  # hang guard only: a generation that has not returned by then is stuck


def run_in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, box) where box holds the result or the exception."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_generation_yields_the_stub_reply_in_order(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY).load(stub_model())
    tokens = []
    result = handle.generate([1, 2, 3, 4], GenerationParams(max_new_tokens=100), tokens.append)
    handle.close()
    assert tokens == REPLY
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (4, len(REPLY))


def test_max_new_tokens_stops_with_length(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY).load(stub_model())
    tokens = []
    result = handle.generate([1], GenerationParams(max_new_tokens=3), tokens.append)
    again = []
    handle.generate([1], GenerationParams(max_new_tokens=100), again.append)
    handle.close()
    assert tokens == REPLY[:3] and result.finish_reason == "length" and result.completion_tokens == 3
    assert again == REPLY  # nothing of the cut-off run leaked into the next one


def test_eos_ends_generation_and_is_not_passed_on(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, [7, 8, EOS, 9, 10]).load(stub_model())
    tokens = []
    result = handle.generate([1], GenerationParams(max_new_tokens=50), tokens.append)
    handle.close()
    assert tokens == [7, 8] and result.finish_reason == "stop"


def test_prompt_input_is_supported(abi, stub_runtime, stub_model, tmp_path):
    record = tmp_path / "runs.jsonl"
    handle = stub_runtime(abi, REPLY, record=record).load(stub_model())
    texts = []
    result = handle.generate_prompt("Bonjour « monde »", GenerationParams(max_new_tokens=4), lambda t: None,
                                    on_text=lambda tid, text: texts.append(text))
    handle.close()
    assert result.completion_tokens == 4 and texts == [f"<{t}>".encode() for t in REPLY[:4]]
    run = read_records(record)[0]
    assert run["input_type"] == "prompt" and run["prompt"] == "Bonjour « monde »" and run["token_ids"] is None


def test_abort_mid_generation_returns_and_the_handle_is_reusable(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, LONG, delay_ms=2).load(stub_model())
    seen = threading.Event()
    tokens = []

    def on_token(t):
        tokens.append(t)
        if len(tokens) == 5:
            seen.set()

    t, box = run_in_thread(lambda: handle.generate([1], GenerationParams(max_new_tokens=len(LONG)), on_token))
    assert seen.wait(DEADLINE_S)
    handle.abort()
    t.join(DEADLINE_S)
    assert not t.is_alive(), "generate did not return after abort"
    result = box["result"]
    assert result.finish_reason == "abort" and 5 <= result.completion_tokens < len(LONG)
    assert tokens == LONG[: len(tokens)]

    again = []
    second = handle.generate([1], GenerationParams(max_new_tokens=6), again.append)
    handle.close()
    assert again == LONG[:6] and second.finish_reason == "length"


def test_abort_when_idle_is_harmless(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY).load(stub_model())
    handle.abort()
    tokens = []
    assert handle.generate([1], GenerationParams(max_new_tokens=100), tokens.append).finish_reason == "stop"
    handle.close()
    handle.abort()
    assert tokens == REPLY


def test_error_state_becomes_generation_failed(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY, error_after=3).load(stub_model())
    tokens = []
    t, box = run_in_thread(lambda: handle.generate([1], GenerationParams(max_new_tokens=100), tokens.append))
    t.join(DEADLINE_S)
    assert not t.is_alive(), "an ERROR from the library must not hang generate"
    assert isinstance(box.get("error"), GenerationFailed)
    assert "RKLLM_RUN_ERROR" in str(box["error"]) and tokens == REPLY[:3]
    with pytest.raises(GenerationFailed):  # the handle still answers (and fails again) instead of hanging
        handle.generate([1], GenerationParams(max_new_tokens=100), lambda t: None)
    handle.close()


def test_an_exception_in_on_token_stops_the_run_and_propagates(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, LONG, delay_ms=1).load(stub_model())

    def on_token(t):
        raise ValueError("client went away")

    with pytest.raises(ValueError, match="client went away"):
        handle.generate([1], GenerationParams(max_new_tokens=len(LONG)), on_token)
    tokens = []
    handle.generate([1], GenerationParams(max_new_tokens=3), tokens.append)
    handle.close()
    assert tokens == LONG[:3]


def test_close_twice_is_harmless_and_closed_handle_refuses_work(abi, stub_runtime, stub_model, tmp_path):
    record = tmp_path / "runs.jsonl"
    handle = stub_runtime(abi, REPLY, record=record).load(stub_model())
    with handle:
        handle.generate([1], GenerationParams(max_new_tokens=2), lambda t: None)
    handle.close()
    handle.close()
    assert handle.closed
    with pytest.raises(GenerationFailed, match="closed"):
        handle.generate([1], GenerationParams(), lambda t: None)
    assert [r["event"] for r in read_records(record)] == ["run", "destroy"]  # destroyed exactly once


def test_close_during_generation_aborts_first(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, LONG, delay_ms=2).load(stub_model())
    started = threading.Event()
    t, box = run_in_thread(lambda: handle.generate([1], GenerationParams(max_new_tokens=len(LONG)),
                                                   lambda tok: started.set()))
    assert started.wait(DEADLINE_S)
    handle.close()
    t.join(DEADLINE_S)
    assert not t.is_alive() and box["result"].finish_reason == "abort" and handle.closed


def test_several_handles_of_one_model_run_at_once(stub_runtime, stub_model, clean_env):
    runtime = stub_runtime("1.3", [11, 12, 13, 14, 15, 16], delay_ms=2)
    spec = stub_model()
    first = runtime.load(spec)
    clean_env.setenv("RKLLM_STUB_REPLY_IDS", "21,22,23,24,25,26")
    second = runtime.load(spec)
    outputs = {1: [], 2: []}
    threads = [run_in_thread(lambda h=h, k=k: h.generate([1], GenerationParams(max_new_tokens=50), outputs[k].append))
               for k, h in ((1, first), (2, second))]
    for t, _ in threads:
        t.join(DEADLINE_S)
    first.close()
    second.close()
    assert outputs == {1: [11, 12, 13, 14, 15, 16], 2: [21, 22, 23, 24, 25, 26]}


def test_runs_record_token_ids_keep_history_and_params(abi, stub_runtime, stub_model, tmp_path):
    record = tmp_path / "runs.jsonl"
    spec = stub_model(num_ctx=2048, TEMPERATURE="0.5", TOP_K="7", TOP_P="0.8", REPEAT_PENALTY="1.2",
                      ENABLED_CPUS_MASK="4-7", BASE_DOMAIN_ID="1", EMBED_FLASH="1")
    handle = stub_runtime(abi, REPLY, record=record).load(spec)
    handle.generate([5, 6, 7], GenerationParams(max_new_tokens=2, temperature=0.3), lambda t: None)
    exact = handle.last_stop_exact
    handle.generate([8, 9], GenerationParams(max_new_tokens=2), lambda t: None, keep_history=True)
    handle.clear_kv_cache()
    handle.close()
    records = read_records(record)
    runs = [r for r in records if r["event"] == "run"]
    assert [r["token_ids"] for r in runs] == [[5, 6, 7], [8, 9]]
    p = runs[0]["param"]
    assert (p["max_context_len"], p["top_k"], p["base_domain_id"]) == (2048, 7, 1)
    assert p["temperature"] == pytest.approx(0.5) and p["top_p"] == pytest.approx(0.8)
    if abi == "1.1":
        assert runs[1]["keep_history"] is None and "embed_flash" not in p
        assert "clear_kv_cache" not in [r["event"] for r in records]
    else:
        assert [r["keep_history"] for r in runs] == [0, 1]
        if abi == "1.2.0":  # void callback: the limit is enforced by rkllm_abort, which is not exact
            assert not exact and runs[1]["kv_len_before"] >= 3 + 2
        else:  # the callback pauses the run at the limit: the cache holds exactly prompt + reply
            assert exact and runs[1]["kv_len_before"] == 3 + 2
        assert (p["enabled_cpus_mask"], p["enabled_cpus_num"], p["embed_flash"]) == (0xF0, 4, 1)
        assert "clear_kv_cache" in [r["event"] for r in records]
    if abi == "1.3":  # per-run sampling overrides reach the library
        assert runs[0]["sampling"]["temperature"] == pytest.approx(0.3) and runs[0]["infer_max_new_tokens"] == 2
    if abi in ("1.2.1", "1.3"):
        assert runs[0]["role"] == "user"


def test_a_natural_finish_leaves_an_exact_cache_and_an_abort_does_not(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY).load(stub_model())
    handle.generate([1], GenerationParams(max_new_tokens=100), lambda t: None)
    natural = handle.last_stop_exact
    stopped = threading.Event()

    def on_token(t):
        if not stopped.is_set():
            stopped.set()
            handle.abort()

    result = handle.generate([1], GenerationParams(max_new_tokens=100), on_token)
    handle.close()
    assert natural and result.finish_reason == "abort" and not handle.last_stop_exact


def test_library_refusing_the_model_is_a_load_error(stub_runtime, stub_model):
    runtime = stub_runtime("1.2.1", init_fail=True)
    with pytest.raises(ModelLoadError, match="rkllm_init failed"):
        runtime.load(stub_model())


def test_a_failing_rkllm_run_is_reported(stub_runtime, stub_model):
    handle = stub_runtime("1.2.1", REPLY).load(stub_model(num_ctx=4))
    with pytest.raises(GenerationFailed, match="rkllm_run returned"):  # the stub refuses input > max_context_len
        handle.generate(list(range(10)), GenerationParams(max_new_tokens=2), lambda t: None)
    tokens = []
    handle.generate([1], GenerationParams(max_new_tokens=2), tokens.append)
    handle.close()
    assert tokens == REPLY[:2]


def test_is_running_follows_each_release_convention(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, LONG, delay_ms=2).load(stub_model())
    assert not handle.is_running()
    started = threading.Event()
    during = []

    def on_token(t):
        if not started.is_set():
            started.set()
            during.append(handle.is_running())
            handle.abort()

    handle.generate([1], GenerationParams(max_new_tokens=len(LONG)), on_token)
    after = handle.is_running()
    handle.close()
    assert during == [True] and not after


def test_lora_kv_cache_size_and_busy_guards(stub_runtime, stub_model, tmp_path):
    handle = stub_runtime("1.3", REPLY).load(stub_model())
    adapter = tmp_path / "adapter.rkllm"
    adapter.write_bytes(b"lora")
    handle.load_lora(str(adapter), "style")
    with pytest.raises(ModelLoadError, match="rkllm_load_lora"):
        handle.load_lora(str(tmp_path / "missing.rkllm"), "none")
    handle.generate([1, 2, 3], GenerationParams(max_new_tokens=2), lambda t: None, keep_history=True)
    assert handle.kv_cache_size() == 3 + 2
    handle.clear_kv_cache()
    assert handle.kv_cache_size() == 0
    handle.close()
    with pytest.raises(GenerationFailed, match="closed"):
        handle.clear_kv_cache()
