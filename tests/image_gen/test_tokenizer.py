"""The CLIP tokenizer read from a model's tokenizer/ folder, against transformers' CLIPTokenizer."""

import numpy as np
import pytest

from image_engine.clip_tokenizer import CLIPTokenizer

PROMPTS = [
    "a cinematic forest at sunrise",
    "A Cinematic   FOREST,\tat sunrise!!",
    "portrait of a cat & a dog &amp; 8k, ultra-detailed (masterpiece:1.2)",
    "café crème, naïve façade — 東京 🌸",
    "",
    "the " * 100,
]


@pytest.fixture(scope="module")
def ours(tiny_model):
    return CLIPTokenizer.from_dir(tiny_model / "tokenizer")


def test_ids_are_start_prompt_end_then_padding_to_77(ours):
    ids = ours("the dog")
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    row = ids[0].tolist()
    assert row[0] == ours.bos_id and row[1:3] == [ours.vocab["the</w>"], ours.vocab["dog</w>"]]
    assert row[3] == ours.eos_id and set(row[4:]) == {ours.pad_id}


def test_long_prompts_are_truncated_keeping_the_end_token(ours):
    row = ours("the " * 100)[0].tolist()
    assert len(row) == 77 and row[-1] == ours.eos_id and row[1:76] == [ours.vocab["the</w>"]] * 75


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_transformers_clip_tokenizer(ours, tiny_model, prompt):
    transformers = pytest.importorskip("transformers")
    ref = transformers.CLIPTokenizer.from_pretrained(str(tiny_model / "tokenizer"))
    want = ref(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours(prompt)[0].tolist() == want
