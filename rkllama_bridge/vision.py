"""Vision encoders of vision-language models: an image in, the embeddings the LLM takes for it out.

A model directory names its encoder with the Modelfile key ``VISION_ENCODER``: an ``.rknn`` (RKNNLite on the
board, imported only then, taking the NPU arbiter's turn per image) or an ``.onnx`` (onnxruntime on the
CPU, anywhere), or ``sim`` (the ``sim`` runtime's stand-in: deterministic embeddings made from the pixels).
Preprocessing follows the rknn-llm multimodal demo: RGB, padded to a square with the mean colour
(``expand2square``), resized to the encoder's input size. The size, mean and std come from the model's own
``preprocessor_config.json`` when it has one (``image_mean``, ``image_std``, ``size``/``crop_size``), else
from the encoder's input shape and CLIP's mean/std. An RKNN encoder takes uint8 NHWC pixels (mean/std are
baked in at conversion); an ONNX encoder takes normalised float32 NCHW. The output, ``(1, n_tokens, dim)``
or ``(n_tokens, dim)``, is the image's embedding.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from .runtimes.base import PromptImage

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIM_ENCODER = "sim"
SIM_GRID = 4  # the sim encoder's tokens: a 4 x 4 grid of the image's mean colours


class VisionError(Exception):
    """The encoder cannot be loaded or run; the message says why."""


@dataclass(frozen=True)
class Preprocess:
    """How pixels are prepared for the encoder."""

    width: int
    height: int
    mean: Tuple[float, float, float] = CLIP_MEAN
    std: Tuple[float, float, float] = CLIP_STD
    pad_square: bool = True

    def square(self, image):
        """The image padded to a square with the mean colour (as the demo's expand2square)."""
        from PIL import Image

        w, h = image.size
        if not self.pad_square or w == h:
            return image
        side = max(w, h)
        fill = tuple(int(round(m * 255)) for m in self.mean)
        out = Image.new("RGB", (side, side), fill)
        out.paste(image, ((side - w) // 2, (side - h) // 2))
        return out

    def pixels(self, image) -> np.ndarray:
        """uint8 HWC RGB at the encoder's size."""
        from PIL import Image

        return np.asarray(self.square(image.convert("RGB")).resize((self.width, self.height), Image.BILINEAR),
                          dtype=np.uint8)

    def normalised(self, image) -> np.ndarray:
        """float32 NCHW, (x / 255 - mean) / std."""
        x = self.pixels(image).astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def read_preprocessor_config(directory: Path) -> dict:
    """``preprocessor_config.json`` of the model (``{}`` when it has none); a malformed one is an error."""
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VisionError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VisionError(f"{path}: must be a JSON object")
    return data


def _config_size(config: dict) -> Optional[Tuple[int, int]]:
    for key in ("crop_size", "size"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value, value
        if isinstance(value, dict):
            if isinstance(value.get("width"), int) and isinstance(value.get("height"), int):
                return value["width"], value["height"]
            edge = value.get("shortest_edge")
            if isinstance(edge, int) and edge > 0:
                return edge, edge
    return None


def _triple(value, fallback) -> Tuple[float, float, float]:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return fallback


def preprocess_for(config: dict, input_size: Optional[Tuple[int, int]]) -> Preprocess:
    """The preprocessing of a model: its config's size, else the encoder's input size; its mean/std."""
    size = _config_size(config) or input_size
    if size is None:
        raise VisionError("the encoder's input size is unknown: give it a fixed input shape or a "
                          "preprocessor_config.json with 'size'")
    return Preprocess(size[0], size[1], _triple(config.get("image_mean"), CLIP_MEAN),
                      _triple(config.get("image_std"), CLIP_STD), bool(config.get("do_pad", True)))


class VisionEncoder:
    """One model's encoder. ``encode`` is serialised (one image at a time per encoder)."""

    def __init__(self, name: str, describe: str, preprocess: Preprocess, run: Callable[[object], np.ndarray],
                 close: Callable[[], None] = lambda: None):
        self.name = name
        self.describe = describe
        self.preprocess = preprocess
        self._run = run
        self._close = close
        self._lock = threading.Lock()

    def encode(self, image, digest: str) -> PromptImage:
        """The embedding of one decoded (PIL) image whose bytes hash to ``digest``."""
        with self._lock:
            out = np.asarray(self._run(image), dtype=np.float32)
        if out.ndim == 3 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 2 or 0 in out.shape:
            raise VisionError(f"{self.name}: the encoder returned shape {tuple(out.shape)}, expected "
                              "(1, n_tokens, dim) or (n_tokens, dim)")
        return PromptImage(np.ascontiguousarray(out), digest, self.preprocess.width, self.preprocess.height)

    def close(self) -> None:
        self._close()


def _sim_encoder(name: str, config: dict) -> VisionEncoder:
    pre = preprocess_for(config, (SIM_GRID * 8, SIM_GRID * 8))

    def run(image) -> np.ndarray:
        x = pre.pixels(image).astype(np.float32) / 255.0
        cells = x.reshape(SIM_GRID, x.shape[0] // SIM_GRID, SIM_GRID, x.shape[1] // SIM_GRID, 3).mean(axis=(1, 3))
        return cells.reshape(SIM_GRID * SIM_GRID, 3)

    return VisionEncoder(name, "simulated (mean colours of a 4x4 grid)", pre, run)


def load_encoder(name: str, directory: Path, value: str,
                 npu_turn: Optional[Callable[[], AbstractContextManager]] = None) -> VisionEncoder:
    """The encoder a Modelfile's ``VISION_ENCODER`` names (a file inside ``directory``, or ``sim``)."""
    config = read_preprocessor_config(directory)
    if value == SIM_ENCODER:
        return _sim_encoder(name, config)
    path = (Path(directory) / value).resolve()
    if Path(directory).resolve() not in path.parents or not path.is_file():
        raise VisionError(f"{name}: VISION_ENCODER {value!r} is not a file inside the model directory")
    from image_engine.runtimes import RuntimeFailure, load_runtime

    try:
        runtime = load_runtime(path, gate=npu_turn, threads=1)
    except RuntimeFailure as exc:
        raise VisionError(f"{name}: vision encoder {path.name}: {exc}") from None
    on_npu = path.suffix.lower() == ".rknn"
    shape = _input_shape(runtime) if not on_npu else None
    pre = preprocess_for(config, shape)
    input_name = runtime.input_names[0] if runtime.input_names else "pixel_values"

    def run(image) -> np.ndarray:
        if on_npu:
            feed = pre.pixels(image).transpose(2, 0, 1)[None]  # NCHW uint8: the runtime makes it NHWC
        else:
            feed = pre.normalised(image)
        try:
            outputs = runtime.run({input_name: feed})
        except RuntimeFailure as exc:
            raise VisionError(f"{name}: vision encoder {path.name}: {exc}") from None
        # Several outputs (the demo's n_output): each token's embeddings side by side, as the demo copies them.
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)

    log.info("%s: vision encoder %s on %s, input %dx%d", name, path.name, runtime.backend, pre.width, pre.height)
    return VisionEncoder(name, f"{path.name} ({runtime.backend})", pre, run, runtime.close)


def _input_shape(runtime) -> Optional[Tuple[int, int]]:
    """(width, height) of an onnxruntime model's first input when it is fixed."""
    shapes = getattr(runtime, "input_shapes", None)
    if not shapes:
        return None
    shape = shapes[0]
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[3], shape[2]
    return None
