"""Bridge processes and settings shared by the exo_rk tests."""

from __future__ import annotations

import json
from pathlib import Path

from exo_rk.model_cards import BUILTIN_CARDS, ModelCard
from exo_rk.settings import Settings
from rkllama_bridge.runtimes.sim import write_sim_model
from tests.support import ServerProcess, bridge_argv

SMOL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SIM_MODEL = "qwen-sim"
LONG_SIM_MODEL = "long-sim"
SIM_DECODE_TOK_S = "200"


def make_sim_model(root: Path, name: str, smol: Path, reply_tokens: int, max_new: int) -> None:
    write_sim_model(root, name, smol, HUGGINGFACE_PATH=SMOL_REPO, NUM_CTX=8192, MAX_NEW_TOKENS=max_new,
                    TEMPERATURE=0.7, SIM_REPLY_TOKENS=reply_tokens)


class RecordingBridge(ServerProcess):
    """A bridge that appends every generation's prompt token ids to ``self.record``."""

    def __init__(self, argv, record: Path, **kw):
        super().__init__(argv + ["--record-prompts", str(record)], **kw)
        self.record = record

    def recorded(self) -> list:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


def sim_bridge_process(store: Path, tmp: Path, *extra: str) -> RecordingBridge:
    argv = bridge_argv(
        store,
        "sim",
        "--sim-decode-tok-s",
        SIM_DECODE_TOK_S,
        "--instances",
        "4",
        "--queue-max",
        "64",
        "--sim-load-s",
        "0",
        *extra,
    )
    return RecordingBridge(argv, tmp / "prompts.jsonl", startup_timeout=60)


def sim_cards() -> dict:
    cards = {card.model_id: card for card in BUILTIN_CARDS}
    for name in (SIM_MODEL, LONG_SIM_MODEL):
        cards[name] = ModelCard(name, name, SMOL_REPO, 30, f"{name} (simulated)")
    return cards


def settings_for(url: str, exo_home: Path, **kw) -> Settings:
    return Settings(servers=(url,), exo_home=exo_home, **kw)
