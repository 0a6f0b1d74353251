"""Incremental detokenization with stop sequences, for streaming text out of token ids."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence


class TextStream:
    """Turns a growing token list into text deltas that never split a character or a stop sequence.

    ``push(token)`` returns the text that is safe to emit now; ``stop_hit`` becomes True when a stop
    sequence appeared (the text before it is all that is ever emitted); ``flush()`` returns what was held.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: List[int] = []
        self.emitted = ""
        self.stop_hit = False
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _cut_at_stop(self, text: str) -> Optional[str]:
        hits = [text.find(s) for s in self.stop if text.find(s) >= 0]
        return text[: min(hits)] if hits else None

    def push(self, token: int) -> str:
        if self.stop_hit:
            return ""
        self.tokens.append(int(token))
        text = self._text()
        cut = self._cut_at_stop(text)
        if cut is not None:
            self.stop_hit = True
            return self._emit(cut)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next token
            return ""
        safe = text[: len(text) - self._hold] if self._hold else text
        return self._emit(safe)

    def flush(self) -> str:
        if self.stop_hit:
            return ""
        text = self._text().rstrip("\ufffd")
        return self._emit(text)

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.emitted) or not upto.startswith(self.emitted):
            return ""
        delta = upto[len(self.emitted) :]
        self.emitted = upto
        return delta

    @property
    def text(self) -> str:
        return self.emitted
