"""exo's types when exo is importable, otherwise minimal stand-ins with the same shape.

The package installs, runs and tests without exo; inside exo the engine subclasses exo's own
``InferenceEngine`` and receives exo's own ``Shard`` objects, so nothing needs converting. The stand-ins
have the signatures of legacy exo 5f18faec1 (``tests/exo_rk/exo_facts.py`` records them and a test compares),
except ``sample``: exo's abstract method takes only ``x`` while its node calls ``sample(x, temp=...)`` and
every concrete engine takes ``(x, temp, top_p)``, so the stand-in declares what the node relies on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

try:  # pragma: no cover - exercised inside real exo
    from exo.download.shard_download import ShardDownloader
    from exo.inference.inference_engine import InferenceEngine
    from exo.inference.shard import Shard

    HAVE_EXO = True
except ImportError:
    HAVE_EXO = False

    @dataclass(frozen=True)
    class Shard:  # type: ignore[no-redef]
        """A layer range of a model, as exo describes it. RKLLM only accepts the whole range."""

        model_id: str
        start_layer: int
        end_layer: int
        n_layers: int

        def __hash__(self) -> int:
            return hash((self.model_id, self.start_layer, self.end_layer, self.n_layers))

        def is_first_layer(self) -> bool:
            return self.start_layer == 0

        def is_last_layer(self) -> bool:
            return self.end_layer == self.n_layers - 1

        def get_layer_count(self) -> int:
            return self.end_layer - self.start_layer + 1

        def to_dict(self) -> Dict[str, Any]:
            return {
                "model_id": self.model_id,
                "start_layer": self.start_layer,
                "end_layer": self.end_layer,
                "n_layers": self.n_layers,
            }

        def from_dict(data: Dict[str, Any]) -> "Shard":  # noqa: N805 - exo's own: called as Shard.from_dict(d)
            return Shard(**data)

        def overlaps(self, other: "Shard") -> bool:
            return shards_overlap(self, other)

    def shards_overlap(shard1: Shard, shard2: Shard) -> bool:
        return shard1.model_id == shard2.model_id and max(shard1.start_layer, shard2.start_layer) <= min(
            shard1.end_layer, shard2.end_layer)

    class ShardDownloader(ABC):  # type: ignore[no-redef]
        """exo's downloader interface; the RKLLM engine never downloads weights (the bridge has them)."""

        @abstractmethod
        async def ensure_shard(self, shard: Shard, inference_engine_name: str) -> Path: ...

        @property
        @abstractmethod
        def on_progress(self) -> Any: ...

        @abstractmethod
        async def get_shard_download_status(self, inference_engine_name: str) -> Any: ...

    class InferenceEngine(ABC):  # type: ignore[no-redef]
        """exo's engine interface. ``session`` is a class attribute in exo: engines set their own."""

        session: Dict[str, Any] = {}

        @abstractmethod
        async def encode(self, shard: Shard, prompt: str) -> np.ndarray: ...

        @abstractmethod
        async def sample(self, x: np.ndarray, temp: float = 0.0, top_p: float = 1.0) -> np.ndarray: ...

        @abstractmethod
        async def decode(self, shard: Shard, tokens: np.ndarray) -> str: ...

        @abstractmethod
        async def infer_tensor(
            self,
            request_id: str,
            shard: Shard,
            input_data: np.ndarray,
            inference_state: Optional[dict] = None,
        ) -> Tuple[np.ndarray, Optional[dict]]: ...

        @abstractmethod
        async def load_checkpoint(self, shard: Shard, path: str): ...

        async def save_checkpoint(self, shard: Shard, path: str):  # noqa: B027 - optional in exo too
            """Engines without trainable weights keep exo's no-op."""

        async def save_session(self, key, value):
            self.session[key] = value

        async def clear_session(self):
            self.session.clear()  # exo calls dict.empty(), which does not exist; the effect it means

        async def infer_prompt(
            self, request_id: str, shard: Shard, prompt: str, inference_state: Optional[dict] = None
        ) -> Tuple[np.ndarray, Optional[dict]]:
            tokens = await self.encode(shard, prompt)
            x = tokens.reshape(1, -1) if shard.model_id != "stable-diffusion-2-1-base" else tokens
            return await self.infer_tensor(request_id, shard, x, inference_state)


def full_shard(model_id: str, n_layers: int) -> Shard:
    """The shard exo builds for a single node holding the whole model."""
    return Shard(model_id, 0, n_layers - 1, n_layers)


__all__ = ["HAVE_EXO", "InferenceEngine", "Shard", "ShardDownloader", "full_shard"]
