"""Modelfile options -> RKLLMParam for each ABI (pure Python, no library needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllama_bridge.rkllm import get_abi
from rkllama_bridge.rkllm.params import describe_param, fill_param, sampling_param, settings_from_spec
from rkllama_bridge.runtimes.base import GenerationParams, ModelLoadError, ModelSpec


def spec(num_ctx: int = 1024, **options: str) -> ModelSpec:
    return ModelSpec(name="m", directory=Path("/models/m"), weights=Path("/models/m/m.rkllm"), num_ctx=num_ctx,
                     eos_token_ids=[2], vocab_size=100, options=options)


def test_modelfile_values_reach_the_param_struct(abi):
    a = get_abi(abi)
    param = a.RKLLMParam()
    settings = settings_from_spec(spec(2048, TOP_K="40", TOP_P="0.95", TEMPERATURE="0.6", REPEAT_PENALTY="1.05",
                                       FREQUENCY_PENALTY="0.1", PRESENCE_PENALTY="0.2", SKIP_SPECIAL_TOKEN="false",
                                       BASE_DOMAIN_ID="2", ENABLED_CPUS_MASK="0xF0", EMBED_FLASH="yes"))
    ignored = fill_param(a, param, settings, b"/models/m/m.rkllm")
    d = describe_param(param)
    assert (d["model_path"], d["max_context_len"], d["top_k"], d["skip_special_token"]) == \
        ("/models/m/m.rkllm", 2048, 40, False)
    assert d["temperature"] == pytest.approx(0.6) and d["top_p"] == pytest.approx(0.95)
    assert d["repeat_penalty"] == pytest.approx(1.05) and d["presence_penalty"] == pytest.approx(0.2)
    assert d["base_domain_id"] == 2 and d["is_async"] is False
    if abi == "1.1":
        assert sorted(ignored) == ["embed_flash", "enabled_cpus_mask"]
    else:
        assert ignored == [] and (d["enabled_cpus_mask"], d["enabled_cpus_num"], d["embed_flash"]) == (0xF0, 4, 1)


@pytest.mark.parametrize("text, mask", [("0xF0", 0xF0), ("240", 240), ("4,5,6,7", 0xF0), ("4-7", 0xF0),
                                        ("0-1,6", 0b1000011)])
def test_cpu_masks_accept_hex_numbers_and_lists(text, mask):
    assert settings_from_spec(spec(ENABLED_CPUS_MASK=text)).enabled_cpus_mask == mask


@pytest.mark.parametrize("key, value", [("TOP_K", "many"), ("TEMPERATURE", "hot"), ("SKIP_SPECIAL_TOKEN", "maybe"),
                                        ("ENABLED_CPUS_MASK", "4-40")])
def test_malformed_values_name_the_key(key, value):
    with pytest.raises(ModelLoadError, match=f"{key}="):
        settings_from_spec(spec(**{key: value}))


def test_non_positive_context_is_refused():
    with pytest.raises(ModelLoadError, match="NUM_CTX"):
        settings_from_spec(spec(num_ctx=0))


def test_only_1_3_takes_per_run_sampling(abi):
    a = get_abi(abi)
    init = a.RKLLMParam(mirostat=2, mirostat_tau=4.0)
    sp = sampling_param(a, GenerationParams(temperature=0.25, top_k=3), init)
    if abi == "1.3":
        assert (sp.top_k, sp.mirostat) == (3, 2) and sp.temperature == pytest.approx(0.25)
    else:
        assert sp is None
