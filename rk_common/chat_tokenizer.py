"""Tokenization for the bridge: HF ``tokenizer.json`` through the ``tokenizers`` library, chat templates
rendered with Jinja the way Hugging Face models expect, and an incremental detokenizer that never emits
half of a multi-byte UTF-8 character.

This avoids importing transformers (seconds) in every bridge process; the files are the model's own.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

#: files a client (e.g. exo's tokenizer resolution) needs to rebuild the tokenizer on its side
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json", "config.json", "vocab.json", "merges.txt", "tokenizer.model")


class TokenizerError(ValueError):
    pass


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _raise_template_error(message: str):
    raise TokenizerError(f"chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTokenizer:
    """The tokenizer of one model directory (``tokenizer.json`` + config + chat template)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{self.directory}: no tokenizer.json (the bridge needs the model's tokenizer files)")
        self._tok = Tokenizer.from_file(str(path))
        config = self._read_json("tokenizer_config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        template_file = self.directory / "chat_template.jinja"
        self.chat_template: Optional[str] = (
            template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template"))
        if isinstance(self.chat_template, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = self._eos_ids()
        self._special_ids = {i for t, i in self._tok.get_vocab(with_added_tokens=True).items()
                             if t in self._special_token_texts()}
        self._template = None

    def _read_json(self, name: str) -> dict:
        p = self.directory / name
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TokenizerError(f"{p}: invalid JSON ({exc})") from None

    def _special_token_texts(self) -> set:
        texts = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        texts.update(x for x in (self.bos_token, self.eos_token) if x)
        return texts

    def _eos_ids(self) -> List[int]:
        ids: List[int] = []
        gen = self._read_json("generation_config.json").get("eos_token_id")
        for value in (gen if isinstance(gen, list) else [gen]):
            if isinstance(value, int):
                ids.append(value)
        if self.eos_token is not None:
            tid = self._tok.token_to_id(self.eos_token)
            if tid is not None and tid not in ids:
                ids.append(tid)
        return ids

    # -- ids <-> text ---------------------------------------------------------------------------------

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text``; special tokens written in the text (e.g. ``<|im_start|>``) are recognised.
        Through ``encode_batch``, which lets go of the GIL while it works (``encode`` holds it: a 1 MB prompt
        stopped every other thread of the process, streams included, for a second)."""
        return self._tok.encode_batch([text], add_special_tokens=False)[0].ids

    def valid_ids(self, ids: Iterable[int]) -> List[int]:
        return [i for i in ids if 0 <= i < self.vocab_size]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Ids outside the vocabulary (some converted models emit them) are dropped."""
        return self._tok.decode(self.valid_ids(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # -- chat template --------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                    tools: Optional[list] = None, **extra) -> str:
        """The conversation as the model's chat template writes it (the text the model is prompted with)."""
        if not self.chat_template:
            # No template: a plain transcript, clearly delimited, is the best a bare model can get.
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_template_error
            env.globals["strftime_now"] = _strftime_now
            try:
                self._template = env.from_string(self.chat_template)
            except jinja2.TemplateError as exc:
                raise TokenizerError(f"{self.directory}: chat template does not compile: {exc}") from None
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                         tools=tools, **extra)
        except jinja2.TemplateError as exc:
            raise TokenizerError(f"chat template failed: {exc}") from None

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True, **extra) -> List[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, **extra))


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces whose concatenation equals ``decode(all ids)``.

    A piece is held back while the decoded text ends in U+FFFD, i.e. while a multi-byte character is only
    partly generated. Decoding restarts a few tokens back each time so that tokenizers whose pieces depend
    on their left neighbour (leading spaces, byte fallback) come out right.
    """

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer
        self.ids: List[int] = []
        self._prefix = 0  # decoding window start
        self._read = 0  # ids up to here have been emitted as text
        self.invalid_ids = 0

    def push(self, token_id: int) -> str:
        if not 0 <= token_id < self.tokenizer.vocab_size:
            self.invalid_ids += 1
            return ""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read])
        after = decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (a truncated character comes out as U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):]
