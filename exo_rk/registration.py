"""Teach legacy exo the ``rkllm`` engine without modifying exo's code.

Upstream legacy exo has no plugin API, so ``exo_rk_hook.pth`` (installed next to the package) calls
``install_import_hook()`` at interpreter start. The hook waits for exo's own modules to load and then:

- ``exo.inference.inference_engine``: ``get_inference_engine("rkllm", downloader)`` builds
  ``RKLLMInferenceEngine``; ``inference_engine_classes["rkllm"]`` names it for topology exchange;
- ``exo.models``: adds the model cards (``exo_rk.model_cards``) to ``model_cards`` / ``pretty_name``;
- ``exo.inference.tokenizers``: before exo resolves the tokenizer of an RKLLM model card, the files are
  fetched from the bridge into exo's downloads directory (exo resolves the tokenizer before the engine
  hears of the request, and offline there is no hub to fall back to);
- ``exo.orchestration.node``: the node never swaps an RKLLM engine for tinygrad when peers change, reports
  ``rkllm`` as its engine, and hands the engine its ``--default-temp`` and ``--max-generate-tokens``;
- ``exo.api.chatgpt_api``, for models the RKLLM engine serves only: the API hands each request's message
  list and ``max_tokens`` to the engine; the EOS token's text is left out of the reply; a reply the engine
  cut short (bridge failure) says ``finish_reason: "error"`` and is logged with its request id, one the
  bridge ended at ``max_tokens`` says ``"length"``; SSE streams end with ``data: [DONE]``; ``/modelpool``
  answers at once (the bridges hold the weights: nothing to download, no hub to ask).

Each patch wraps one function and marks the wrapper (by identity, not the module), so a module that is
re-executed (``importlib.reload``) is patched again and nothing is wrapped twice. ``EXO_RK_NO_HOOK=1``
disables the hook. This module imports nothing heavy: it runs in every interpreter that has the package
installed; the ``.pth`` file imports it only once an exo module is being imported.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs import time in every interpreter that reads the .pth file
    from typing import Any, Callable, Dict, Optional

ENGINE_NAME = "rkllm"
ENGINE_CLASSNAME = "RKLLMInferenceEngine"
_MARK = "_exo_rk_patch"
CHAT_PATHS = ("/chat/completions", "/v1/chat/completions")


def _is_rk(engine: Any) -> bool:
    return type(engine).__name__ == ENGINE_CLASSNAME


def is_patched(function: Any) -> bool:
    """True for a function this hook put in place of exo's."""
    return getattr(function, _MARK, False)


def _wrap(owner: Any, name: str, make: "Callable[[Any], Any]") -> None:
    """Replace ``owner.name`` by ``make(original)`` unless it already is a wrapper of this hook."""
    original = getattr(owner, name)
    if is_patched(original):
        return
    wrapper = make(original)
    wrapper.__wrapped__ = original
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def patch_inference_engine(mod: Any) -> None:
    mod.inference_engine_classes.setdefault(ENGINE_NAME, ENGINE_CLASSNAME)

    def make(original):
        def get_inference_engine(inference_engine_name: str, shard_downloader: Any):
            if inference_engine_name == ENGINE_NAME:
                from exo_rk.engine import RKLLMInferenceEngine

                return RKLLMInferenceEngine(shard_downloader)
            return original(inference_engine_name, shard_downloader)

        return get_inference_engine

    _wrap(mod, "get_inference_engine", make)


def patch_models(mod: Any) -> None:
    from exo_rk.model_cards import install_into, load_cards

    try:
        cards = load_cards()
    except ValueError as exc:
        print(f"exo_rk: model cards file ignored: {exc}", file=sys.stderr)
        from exo_rk.model_cards import BUILTIN_CARDS

        cards = {card.model_id: card for card in BUILTIN_CARDS}
    install_into(mod.model_cards, mod.pretty_name, cards.values())


def patch_tokenizers(mod: Any) -> None:
    def make(original):
        async def resolve_tokenizer(repo_id):
            await ensure_bridge_tokenizer(str(repo_id))
            return await original(repo_id)

        return resolve_tokenizer

    _wrap(mod, "resolve_tokenizer", make)


async def ensure_bridge_tokenizer(repo_id: str) -> None:
    """Fetch the tokenizer of the RKLLM card naming ``repo_id`` when exo's directory has none yet."""
    from exo.download.new_shard_download import ensure_downloads_dir

    from exo_rk.backends import client_for
    from exo_rk.model_cards import load_cards
    from exo_rk.settings import Settings
    from exo_rk.tokenizer_store import repo_dir, sync_tokenizer

    try:
        cards = [c for c in load_cards().values() if c.hf_repo == repo_id]
    except ValueError:
        return
    downloads = await ensure_downloads_dir()
    local = repo_dir(downloads, repo_id)
    if not cards or (local / "tokenizer_config.json").is_file():
        return
    settings = Settings.from_env()
    client = client_for(settings.servers[0], settings)
    try:
        await sync_tokenizer(client, cards[0].bridge_model, repo_id, downloads)
    except Exception as exc:  # noqa: BLE001 - exo reports the missing tokenizer itself
        print(
            f"exo_rk: could not fetch the tokenizer of {repo_id} from {settings.servers[0]}: {exc}",
            file=sys.stderr,
        )
    finally:
        await client.close()


def patch_node(mod: Any) -> None:
    node_cls = mod.Node

    def make_init(original_init):
        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            if _is_rk(self.inference_engine):
                self.inference_engine.bind_node_defaults(
                    temperature=getattr(self, "default_sample_temperature", None),
                    max_generate_tokens=getattr(self, "max_generate_tokens", None))

        return __init__

    def make_select(original_select):
        async def select_best_inference_engine(self):
            if _is_rk(self.inference_engine):
                return None  # RKLLM serves whole models on this node's bridges: never swapped for tinygrad
            return await original_select(self)

        return select_best_inference_engine

    def make_supported(original_supported):
        def get_supported_inference_engines(self):
            if _is_rk(self.inference_engine):
                return [ENGINE_NAME]
            return original_supported(self)

        return get_supported_inference_engines

    _wrap(node_cls, "__init__", make_init)
    _wrap(node_cls, "select_best_inference_engine", make_select)
    _wrap(node_cls, "get_supported_inference_engines", make_supported)


def patch_chatgpt_api(mod: Any) -> None:
    from exo_rk.exo_api_patches import patch_api_module

    patch_api_module(mod, _wrap, _is_rk)


PATCHES: "Dict[str, Callable[[Any], None]]" = {
    "exo.inference.inference_engine": patch_inference_engine,
    "exo.models": patch_models,
    "exo.inference.tokenizers": patch_tokenizers,
    "exo.orchestration.node": patch_node,
    "exo.api.chatgpt_api": patch_chatgpt_api,
}


def apply_patch(name: str, module: Any) -> None:
    """Run the patch for ``name`` (wrappers already in place are left alone); a failure is reported,
    never raised."""
    try:
        PATCHES[name](module)
    except Exception as exc:  # noqa: BLE001 - a broken patch must not break exo's import
        print(f"exo_rk: could not patch {name}: {exc!r} (exo version not supported?)", file=sys.stderr)


class _PatchingLoader:
    """Wraps the real loader; runs the patch right after exo's module executed."""

    def __init__(self, loader: Any, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        apply_patch(self._name, module)

    def __getattr__(self, attr: str):
        return getattr(self._loader, attr)


class ExoPatchingFinder:
    """Finds exo's modules through the other finders and patches them right after they execute."""

    def find_spec(self, fullname: str, path, target=None) -> "Optional[Any]":
        if fullname not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


def install_import_hook() -> bool:
    """Install the hook (once) and patch exo modules already imported; False when disabled."""
    if os.environ.get("EXO_RK_NO_HOOK"):
        return False
    if not any(isinstance(f, ExoPatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ExoPatchingFinder())
    for name in PATCHES:
        if name in sys.modules:
            apply_patch(name, sys.modules[name])
    return True
