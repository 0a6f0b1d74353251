"""Model cards: which exo model id runs which bridge model, with which tokenizer repo.

The built-in cards are the seed mapping plus the embedded default model. A user file adds or overrides
cards, in TOML or YAML (``RKLLM_MODELS_FILE``, else ``<user config dir>/exo-rk/models.toml|yaml``)::

    [models."my-qwen"]                 # models:
    bridge_model = "Qwen2.5-0.5B"      #   my-qwen: {bridge_model: Qwen2.5-0.5B,
    hf_repo = "Qwen/Qwen2.5-0.5B-Instruct"  #     hf_repo: Qwen/Qwen2.5-0.5B-Instruct, layers: 24}
    layers = 24
    pretty_name = "Qwen2.5 0.5B (RKLLM)"

``hf_repo`` names the directory exo's tokenizer resolution reads (``$EXO_HOME/downloads/<org>--<name>``);
the files themselves come from the bridge, so nothing is fetched from a hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, MutableMapping, Optional

from exo_rk.settings import DEFAULT_MODEL_ID as DEFAULT_MODEL_ID  # re-exported: the card list names it
from exo_rk.settings import PROGRAM

ENGINE_CLASSNAME = "RKLLMInferenceEngine"
IMAGE_MODEL_IDS = frozenset({"stable-diffusion-2-1-base"})


@dataclass(frozen=True)
class ModelCard:
    """One servable model. ``layers`` only matters to exo's partitioning (RKLLM runs whole models)."""

    model_id: str
    bridge_model: str
    hf_repo: str
    layers: int = 28
    pretty_name: Optional[str] = None

    def to_exo(self) -> Dict[str, Any]:
        """The entry exo's ``model_cards`` dict expects."""
        return {"layers": self.layers, "repo": {ENGINE_CLASSNAME: self.hf_repo}}


BUILTIN_CARDS = (
    ModelCard(
        "qwen2.5-1.5b-instruct-rkllm",
        "Qwen2.5-1.5B-Instruct",
        "Qwen/Qwen2.5-1.5B-Instruct",
        28,
        "Qwen2.5 1.5B Instruct (RKLLM)",
    ),
    # Its own repo, not Qwen's: the R1 distill has a different chat template and the tokenizer directory
    # is shared by every card naming the same repo.
    ModelCard(
        "deepseek-r1-1.5b-rkllm",
        "DeepSeek-R1-1.5B",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        28,
        "DeepSeek R1 Distill Qwen 1.5B (RKLLM)",
    ),
    ModelCard("qwen2.5-1.5b-rkllm", "Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B-Instruct", 28, "Qwen2.5 1.5B (RKLLM)"),
    ModelCard("qwen2.5-3b-rkllm", "Qwen2.5-3B", "Qwen/Qwen2.5-3B-Instruct", 36, "Qwen2.5 3B (RKLLM)"),
    ModelCard("phi-3-mini-rkllm", "Phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", 32, "Phi-3 Mini (RKLLM)"),
    ModelCard(
        "smollm2-135m-instruct",
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        30,
        "SmolLM2 135M Instruct (bridge default)",
    ),
)


def user_cards_path(env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The user file in use: ``EXO_RK_MODELS_FILE`` / ``RKLLM_MODELS_FILE`` if set, else the first existing
    default path."""
    configured = PROGRAM.env_value("models_file", env)
    if configured is not None:
        return configured
    try:
        from platformdirs import user_config_dir
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return None
    base = Path(user_config_dir("exo-rk"))
    for name in ("models.toml", "models.yaml", "models.yml"):
        if (base / name).is_file():
            return base / name
    return None


def _read_user_file(path: Path) -> Dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"{path}: model cards file must end in .toml, .yaml or .yml")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: expected a 'models' table mapping model ids to cards")
    return models


def card_from_mapping(model_id: str, entry: Mapping[str, Any], source: str = "model card") -> ModelCard:
    """Validate one user entry; unknown keys and wrong types raise ValueError naming the field."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: card {model_id!r} must be a table")
    known = {"bridge_model", "hf_repo", "layers", "pretty_name"}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(
            f"{source}: card {model_id!r} has unknown keys {sorted(unknown)}; known: {sorted(known)}"
        )
    bridge_model = entry.get("bridge_model", model_id)
    hf_repo = entry.get("hf_repo")
    if not isinstance(hf_repo, str) or "/" not in hf_repo:
        raise ValueError(f"{source}: card {model_id!r} needs hf_repo as 'org/name'")
    layers = entry.get("layers", 28)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ValueError(f"{source}: card {model_id!r} layers must be a positive integer")
    return ModelCard(model_id, str(bridge_model), hf_repo, layers, entry.get("pretty_name"))


def load_cards(path: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> Dict[str, ModelCard]:
    """Built-in cards overridden/extended by the user file (``path`` or the default location)."""
    cards = {card.model_id: card for card in BUILTIN_CARDS}
    path = path or user_cards_path(env)
    if path is not None:
        if not path.is_file():
            raise ValueError(f"model cards file {path} does not exist")
        for model_id, entry in _read_user_file(path).items():
            cards[str(model_id)] = card_from_mapping(str(model_id), entry, str(path))
    return cards


def install_into(
    model_cards: MutableMapping[str, Any], pretty_name: MutableMapping[str, str], cards: Iterable[ModelCard]
) -> None:
    """Extend exo's ``model_cards`` / ``pretty_name`` dicts in place (other engines' entries are kept)."""
    for card in cards:
        entry = model_cards.setdefault(card.model_id, {"layers": card.layers, "repo": {}})
        entry.setdefault("repo", {})[ENGINE_CLASSNAME] = card.hf_repo
        entry.setdefault("layers", card.layers)
        if card.pretty_name:
            pretty_name.setdefault(card.model_id, card.pretty_name)
    if image_engine_available() and "stable-diffusion-2-1-base" in model_cards:
        model_cards["stable-diffusion-2-1-base"].setdefault("repo", {})[ENGINE_CLASSNAME] = (
            "stabilityai/stable-diffusion-2-1-base"
        )


def image_engine_available() -> bool:
    """True when ``exo_rk.image_engine`` is installed, so image model ids can be delegated to it."""
    from importlib.util import find_spec

    return find_spec("exo_rk.image_engine") is not None


def _exo_cards_for_entry_point() -> Dict[str, Dict[str, Any]]:
    try:
        cards = load_cards()
    except ValueError:
        cards = {card.model_id: card for card in BUILTIN_CARDS}
    return {model_id: card.to_exo() for model_id, card in cards.items()}


# Read by exo forks through the ``exo.models`` entry point (``exo_rk.model_cards:EXO_MODEL_CARDS``).
EXO_MODEL_CARDS: Dict[str, Dict[str, Any]] = _exo_cards_for_entry_point()
