"""Images through RKLLM's multimodal input, on the stub of every ABI: the embeddings, token counts, image
size and tags reach the library intact, two images give two replies, the same image reuses the prefix."""

from __future__ import annotations

import hashlib

import numpy as np

from rkllama_bridge.rkllm import get_abi
from rkllama_bridge.runtimes.base import GenerationParams, ImagePrompt, PromptImage, prompt_key

from .conftest import read_records

REPLY = list(range(600, 624))
DIM = 8
N_TOKENS = 4


def image(seed: int, n_tokens: int = N_TOKENS) -> PromptImage:
    emb = np.random.default_rng(seed).standard_normal((n_tokens, DIM)).astype(np.float32)
    return PromptImage(emb, hashlib.sha256(emb.tobytes()).hexdigest(), 28, 28)


def fnv1a(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def prompt(*images: PromptImage, ids=(11, 12, 13)) -> tuple:
    text = "<|im_start|>user\n" + "<image>" * len(images) + "What is this?<|im_end|>\n<|im_start|>assistant\n"
    return list(ids), ImagePrompt(tuple(images), tuple(1 for _ in images), text)


def run(handle, ids, images, reuse=False):
    tokens = []
    result = handle.generate(ids, GenerationParams(max_new_tokens=64), tokens.append, reuse_prefix=reuse,
                             images=images)
    return tokens, result


def test_embeddings_counts_and_tags_arrive_intact(abi, stub_runtime, stub_model, tmp_path):
    record = tmp_path / "rec.jsonl"
    handle = stub_runtime(abi, REPLY, record=record, embed_dim=DIM).load(stub_model(vision_encoder="v.onnx"))
    a = image(1)
    ids, images = prompt(a)
    tokens, result = run(handle, ids, images)
    handle.close()
    (rec,) = [r for r in read_records(record) if r["event"] == "run"]
    assert rec["input_type"] == "multimodal" and rec["prompt"] == images.text
    img = rec["image"]
    assert (img["n_image_tokens"], img["n_image"], img["embed_floats"]) == (N_TOKENS, 1, N_TOKENS * DIM)
    assert img["embed_fnv1a"] == fnv1a(a.embedding.tobytes())
    assert abs(img["embed_sum"] - float(a.embedding.astype(np.float64).sum())) < 1e-5
    if get_abi(abi).has_n_image:
        assert (img["image_width"], img["image_height"]) == (28, 28)
    tags = (img.get("image_start"), img.get("image_end"), img.get("image_content")) if abi == "1.3" else \
        (rec["param"]["img_start"], rec["param"]["img_end"], rec["param"]["img_content"])
    assert tags == ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
    assert sorted(tokens) == sorted(REPLY) and result.prompt_tokens == len(ids) + N_TOKENS


def test_two_images_give_two_replies_and_the_same_image_the_same(abi, stub_runtime, stub_model):
    handle = stub_runtime(abi, REPLY, embed_dim=DIM).load(stub_model(vision_encoder="v.onnx"))
    first, _ = run(handle, *prompt(image(1)))
    other, _ = run(handle, *prompt(image(2)))
    again, _ = run(handle, *prompt(image(1)))
    handle.close()
    assert first != other and first == again


def test_several_images_go_in_one_input_where_the_abi_allows(stub_runtime, stub_model, tmp_path):
    record = tmp_path / "rec.jsonl"
    handle = stub_runtime("1.3", REPLY, record=record, embed_dim=DIM).load(stub_model(vision_encoder="v.onnx"))
    a, b = image(1), image(2)
    run(handle, *prompt(a, b))
    handle.close()
    (rec,) = [r for r in read_records(record) if r["event"] == "run"]
    both = np.concatenate([a.embedding, b.embedding]).tobytes()
    assert (rec["image"]["n_image"], rec["image"]["embed_fnv1a"]) == (2, fnv1a(both))


def test_the_same_image_in_history_reuses_the_prefix(stub_runtime, stub_model, tmp_path):
    """Turn 2 extends turn 1 (same image): only the new token ids are sent. A different image at the
    same place: the whole multimodal prompt again, from an empty cache."""
    record = tmp_path / "rec.jsonl"
    handle = stub_runtime("1.2.1", REPLY[:3], record=record, embed_dim=DIM).load(stub_model(vision_encoder="v"))
    ids, images = prompt(image(1))
    reply, first = run(handle, ids, images, reuse=True)
    follow = ids + reply + [2, 21, 22]
    _, second = run(handle, follow, ImagePrompt(images.images, images.positions, images.text + "..."), reuse=True)
    changed = ImagePrompt((image(3),), images.positions, images.text + "...")
    _, third = run(handle, follow, changed, reuse=True)
    handle.close()
    runs = [r for r in read_records(record) if r["event"] == "run"]
    assert [r["input_type"] for r in runs] == ["multimodal", "token", "multimodal"]
    assert runs[1]["token_ids"] == [2, 21, 22]
    assert second.cached_tokens == len(prompt_key(ids, images)) + len(reply)
    assert third.cached_tokens == 0 and any(r["event"] == "clear_kv_cache" for r in read_records(record))


def test_image_key_ids_depend_on_the_image_only():
    a, b = image(1), image(2)
    ids = [5, 6, 7]
    key_a = prompt_key(ids, ImagePrompt((a,), (1,), ""))
    assert key_a[0] == 5 and key_a[-2:] == [6, 7] and len(key_a) == 3 + N_TOKENS
    assert all(k < 0 for k in key_a[1:1 + N_TOKENS])
    assert key_a == prompt_key(ids, ImagePrompt((image(1),), (1,), "other text"))
    assert key_a != prompt_key(ids, ImagePrompt((b,), (1,), ""))
