"""CLIP's byte-level BPE tokenizer, read from a model's own ``tokenizer/`` folder (vocab.json, merges.txt).

Stable Diffusion's text encoder takes exactly ``model_max_length`` (77) ids: start token, up to 75 prompt
tokens, end token, then padding with the model's pad token (``<|endoftext|>`` for SD 1.5, ``!`` for SD 2).
Nothing is fetched: a model directory without tokenizer files is an error naming the missing file.
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The reversible byte → printable character map of byte-level BPE (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class CLIPTokenizer:
    """Prompt → fixed-length int32 ids for a CLIP text encoder."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77,
                 pad_token: str = EOS):
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length
        self.bos_id = vocab[BOS]
        self.eos_id = vocab[EOS]
        if pad_token not in vocab:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self.pad_id = vocab[pad_token]
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_dir(cls, path: str | Path) -> CLIPTokenizer:
        """Load ``vocab.json`` + ``merges.txt`` (+ optional ``tokenizer_config.json`` for length and padding)."""
        path = Path(path)
        for name in ("vocab.json", "merges.txt"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"tokenizer file {path / name} is missing")
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        settings = _read_settings(path)
        return cls(vocab, merges, max_length=int(settings.get("model_max_length", 77)),
                   pad_token=settings.get("pad_token", EOS))

    def tokenize(self, text: str) -> list[int]:
        """The BPE ids of ``text`` without start/end tokens; unknown pieces map to the end token."""
        table = byte_to_unicode()
        ids: list[int] = []
        for piece in _PATTERN.findall(_normalize(text)):
            mapped = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab.get(tok, self.eos_id) for tok in self._bpe(mapped))
        return ids

    def __call__(self, text: str) -> np.ndarray:
        """Shape (1, max_length) int32: start, prompt tokens (truncated), end, padding."""
        body = self.tokenize(text)[: self.max_length - 2]
        ids = [self.bos_id, *body, self.eos_id]
        ids += [self.pad_id] * (self.max_length - len(ids))
        return np.asarray([ids], dtype=np.int32)

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            word = _merge(word, best)
        self._cache[token] = word
        return word


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _normalize(text: str) -> str:
    # As the tokenizer diffusers pipelines use (transformers'): NFC, collapsed whitespace, lowercase; no
    # HTML unescaping, so "&amp;" stays four characters as the models saw it there.
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split()).lower()


def _read_settings(path: Path) -> dict:
    settings: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            raw = json.loads(f.read_text(encoding="utf-8"))
            for key in ("model_max_length", "pad_token"):
                value = raw.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if value is not None:
                    settings[key] = value
    if settings.get("model_max_length", 77) > 10_000:
        settings.pop("model_max_length")  # "unbounded" sentinel some configs carry
    return settings
