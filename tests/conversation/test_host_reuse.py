"""The host runtime's prefix reuse on the real default model: a follow-up evaluated on the kept cache
gives the same greedy tokens as the whole prompt evaluated from scratch."""

from __future__ import annotations

from rkllama_bridge.runtimes.base import GenerationParams, ModelSpec
from rkllama_bridge.runtimes.host import HostRuntime

GREEDY = GenerationParams(max_new_tokens=4, temperature=0.0, repeat_penalty=1.0)


def test_follow_up_on_the_kept_cache_matches_a_full_prefill(default_model_dir, default_tokenizer):
    spec = ModelSpec(name="smollm2", directory=default_model_dir, weights=default_model_dir / "hf", num_ctx=2048,
                     eos_token_ids=default_tokenizer.eos_token_ids, vocab_size=default_tokenizer.vocab_size)
    handle = HostRuntime(threads=2).load(spec)
    try:
        turn1 = default_tokenizer.encode_chat([{"role": "user", "content": "Name a colour."}])
        first: list = []
        r1 = handle.generate(turn1, GREEDY, first.append, reuse_prefix=True)
        assert r1.cached_tokens == 0 and handle.cached_ids[:len(turn1)] == tuple(turn1)
        kept = handle.cached_ids
        follow = turn1 + first + default_tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd another one?<|im_end|>\n")
        reused: list = []
        r2 = handle.generate(follow, GREEDY, reused.append, reuse_prefix=True)
        assert r2.cached_tokens == len(kept) > len(turn1)
        fresh: list = []
        r3 = handle.generate(follow, GREEDY, fresh.append, reuse_prefix=False)
        assert r3.cached_tokens == 0
        assert reused == fresh
        unrelated: list = []
        r4 = handle.generate(default_tokenizer.encode("Hello"), GREEDY, unrelated.append, reuse_prefix=True)
        assert r4.cached_tokens == 0
    finally:
        handle.close()
