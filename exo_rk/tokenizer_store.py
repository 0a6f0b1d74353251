"""Tokenizer files from the bridge, written where exo's own ``resolve_tokenizer`` finds them offline.

exo's ChatGPT API templates and decodes with the tokenizer it resolves from
``$EXO_HOME/downloads/<org>--<name>`` for the model card's repo id; the bridge serves the model's own
tokenizer files. ``sync_tokenizer`` copies them across (atomically, file by file) and makes them readable
by both the transformers exo pins (4.x: chat template inside ``tokenizer_config.json``, a concrete
tokenizer class) and current ones (``chat_template.jinja``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, List, Optional

from exo_rk import errors
from exo_rk.client import GenerationBackend

log = logging.getLogger(__name__)

# Written by current transformers; exo's transformers 4.x cannot import it, the generic fast class is exact
# for a tokenizer.json.
_PORTABLE_CLASS = "PreTrainedTokenizerFast"
_KNOWN_4X_CLASSES_SUFFIX = ("TokenizerFast", "Tokenizer")


def repo_dir(downloads_dir: Path, hf_repo: str) -> Path:
    """exo's local directory for ``hf_repo``: ``org/name`` → ``downloads/org--name``."""
    return downloads_dir / hf_repo.replace("/", "--")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_portable(directory: Path) -> None:
    """Fold ``chat_template.jinja`` into ``tokenizer_config.json`` and name a class transformers 4.x has."""
    config_path = directory / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    changed = False
    template = directory / "chat_template.jinja"
    if template.is_file() and not config.get("chat_template"):
        config["chat_template"] = template.read_text(encoding="utf-8")
        changed = True
    cls = config.get("tokenizer_class")
    if (directory / "tokenizer.json").is_file() and (
        not cls or not str(cls).endswith(_KNOWN_4X_CLASSES_SUFFIX)
    ):
        config["tokenizer_class"] = _PORTABLE_CLASS
        changed = True
    if changed:
        _write_atomic(config_path, json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8"))


async def sync_tokenizer(
    backend: GenerationBackend, bridge_model: str, hf_repo: str, downloads_dir: Path
) -> Path:
    """Fetch ``bridge_model``'s tokenizer files into exo's directory for ``hf_repo``; returns it.

    When the server has no tokenizer route (a stock rkllama) an existing local copy is used; without one
    a ``BridgeError`` says which directory to fill.
    """
    target = repo_dir(downloads_dir, hf_repo)
    try:
        files, _ = await backend.tokenizer_files(bridge_model)
    except errors.ModelNotFound:
        if (target / "tokenizer_config.json").is_file() or (target / "tokenizer.json").is_file():
            log.info("server has no tokenizer route for %s; using the local copy in %s", bridge_model, target)
            return target
        raise errors.BridgeError(
            f"the server does not serve {bridge_model}'s tokenizer and {target} has none: copy the model's "
            f"tokenizer files (tokenizer.json, tokenizer_config.json) there"
        ) from None
    if not files:
        raise errors.BridgeProtocolError(f"the bridge lists no tokenizer files for {bridge_model}")
    for name in files:
        if "/" in name or name.startswith("."):
            raise errors.BridgeProtocolError(f"refusing tokenizer file name {name!r}")
        data = await backend.tokenizer_file(bridge_model, name)
        await asyncio.to_thread(_write_atomic, target / name, data)
    await asyncio.to_thread(make_portable, target)
    log.info("tokenizer of %s (%d files) written to %s", bridge_model, len(files), target)
    return target


async def load_tokenizer(hf_repo: str, local_dir: Path) -> Any:
    """The tokenizer exo itself would use when exo is installed: exo's ``resolve_tokenizer`` (or, for files
    outside exo's downloads, transformers' ``AutoTokenizer``). Without exo (the standalone gateway) the
    bridge's own: the same files through ``tokenizers`` and Jinja, which templates and decodes as the bridge
    does and spares the gateway importing transformers (and torch) for seconds on its first request.
    Either way it has ``eos_token_id``."""
    try:
        from exo.download.new_shard_download import exo_home
        from exo.inference.tokenizers import resolve_tokenizer
    except ImportError:
        return await asyncio.to_thread(_checked, TemplatingTokenizer, local_dir)
    # exo's resolver only when it reads the very directory the files were written to.
    if (exo_home() / "downloads").resolve() == local_dir.parent.resolve():
        return await resolve_tokenizer(hf_repo)
    return await asyncio.to_thread(_checked, _auto_tokenizer, local_dir)


def _auto_tokenizer(local_dir: Path) -> Any:
    from transformers import AutoTokenizer  # exo depends on transformers

    return AutoTokenizer.from_pretrained(str(local_dir), local_files_only=True)


def _checked(load: Any, local_dir: Path) -> Any:
    tokenizer = load(local_dir)
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise errors.BridgeProtocolError(f"tokenizer in {local_dir} has no eos token")
    return tokenizer


def encode_prompt(tokenizer: Any, text: str) -> List[int]:
    """Token ids of an already templated prompt: the template wrote the special tokens, add none."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def eos_token_id(tokenizer: Any) -> Optional[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else None


class TemplatingTokenizer:
    """The part of transformers' tokenizer API the gateway and the engine use (``encode``, ``decode``,
    ``apply_chat_template``, ``eos_token_id``, ``chat_template``), over the bridge's own tokenizer: a node
    without transformers templates and decodes exactly as the bridge does."""

    def __init__(self, local_dir: Path):
        from rk_common.chat_tokenizer import ChatTokenizer  # tokenizers + jinja2 only

        self._tok = ChatTokenizer(local_dir)
        self.chat_template = self._tok.chat_template
        self.eos_token = self._tok.eos_token
        self.eos_token_id = self._tok.eos_token_ids[0] if self._tok.eos_token_ids else None

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        return self._tok.encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, tokenize: bool = True, add_generation_prompt: bool = False,
                            tools=None, **extra):
        text = self._tok.render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)
        return self.encode(text) if tokenize else text
