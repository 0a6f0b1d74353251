"""The bridge's tokenizer: the chat tokenizer shared with the gateway lives in ``rk_common.chat_tokenizer``."""

from rk_common.chat_tokenizer import TOKENIZER_FILES, ChatTokenizer, IncrementalDetokenizer, TokenizerError

__all__ = ["TOKENIZER_FILES", "ChatTokenizer", "IncrementalDetokenizer", "TokenizerError"]
