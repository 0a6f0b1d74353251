"""Chat requests with images: which models and runtimes take them, the encoders, and the prompt they make.

A model takes images when its Modelfile names a ``VISION_ENCODER`` and the runtime has image input
(``Runtime.max_images() > 0``). The messages arrive from the parsers with image marks in their text and the
image bytes beside (``rk_common.chat_images``); :meth:`ImagePrompts.build` checks the limits, decodes and
encodes each image (one encoder per model, loaded on first use and kept), templates the conversation and
tokenizes the text between the images, so the prompt is token ids plus images at positions.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from rk_common.chat_images import IMAGE_MARK, ImageLimits, check_count, check_image, count_images

from .errors import BadRequest, ModelUnavailable
from .runtimes.base import ImagePrompt, PromptImage, Runtime
from .store import StoredModel
from .vision import VisionEncoder, VisionError, load_encoder

log = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER = "<image>"  # where RKLLM puts an image's tokens in a multimodal prompt (rknn-llm demo)


class ImagePrompts:
    def __init__(self, runtime: Runtime, limits: ImageLimits, npu_turn: Optional[Callable] = None):
        self.runtime = runtime
        self.limits = limits
        self._npu_turn = npu_turn
        self._encoders: Dict[str, VisionEncoder] = {}
        self._lock = threading.Lock()

    def check_accepts(self, stored: StoredModel, n_images: int, param: str = "messages") -> None:
        """A 400 unless ``stored`` on this runtime takes ``n_images`` images."""
        if not stored.modelfile.get("VISION_ENCODER"):
            raise BadRequest(f"model {stored.name} is text-only (its Modelfile names no VISION_ENCODER): it cannot "
                             "take images", code="model_not_vision", param=param)
        most = self.runtime.max_images()
        if most == 0:
            raise BadRequest(f"{self.runtime.no_images_reason()}; model {stored.name} cannot take images here",
                             code="runtime_not_vision", param=param)
        check_count(n_images, ImageLimits(min(most, self.limits.max_images), self.limits.max_bytes,
                                          self.limits.max_pixels), param)

    def encoder(self, stored: StoredModel) -> VisionEncoder:
        with self._lock:
            enc = self._encoders.get(stored.name)
            if enc is None:
                try:
                    enc = load_encoder(stored.name, stored.directory, stored.modelfile.get("VISION_ENCODER"),
                                       self._npu_turn)
                except VisionError as exc:
                    raise ModelUnavailable(str(exc), code="vision_encoder_failed") from None
                self._encoders[stored.name] = enc
            return enc

    def encode(self, stored: StoredModel, images: Sequence[bytes], param: str = "messages") -> List[PromptImage]:
        """Check, decode and encode ``images`` for ``stored`` (in order)."""
        self.check_accepts(stored, len(images), param)
        checked = [check_image(data, self.limits, f"image {i + 1}", param) for i, data in enumerate(images)]
        enc = self.encoder(stored)
        try:
            return [enc.encode(c.image, c.digest) for c in checked]
        except VisionError as exc:
            raise ModelUnavailable(str(exc), code="vision_encoder_failed") from None

    def build(self, stored: StoredModel, messages: Sequence[dict], render: Callable[[List[dict]], str],
              encode_text: Callable[[str], List[int]]) -> Tuple[List[int], ImagePrompt]:
        """The prompt of a conversation with images: token ids and the images at their positions."""
        raw = [data for m in messages for data in (m.get("images") or ())]
        images = self.encode(stored, raw)
        text = render([{k: v for k, v in m.items() if k != "images"} for m in messages])
        segments = text.split(IMAGE_MARK)
        if len(segments) != len(images) + 1:
            raise BadRequest(f"the chat template of {stored.name} kept {len(segments) - 1} of the {len(images)} "
                             "images (images only go in messages the template shows)", code="invalid_messages")
        return from_segments(stored, segments, images, encode_text)

    def close(self) -> None:
        with self._lock:
            for enc in self._encoders.values():
                enc.close()
            self._encoders.clear()


def from_segments(stored: StoredModel, segments: Sequence[str], images: Sequence[PromptImage],
                  encode_text: Callable[[str], List[int]]) -> Tuple[List[int], ImagePrompt]:
    """Token ids of the text pieces between images, and the images at the positions between them."""
    ids: List[int] = []
    positions: List[int] = []
    for i, segment in enumerate(segments):
        ids.extend(encode_text(segment) if segment else [])
        if i < len(images):
            positions.append(len(ids))
    placeholder = stored.modelfile.get("IMAGE_PLACEHOLDER") or DEFAULT_PLACEHOLDER
    return ids, ImagePrompt(tuple(images), tuple(positions), placeholder.join(segments), placeholder)


def from_token_ids(stored: StoredModel, ids: Sequence[int], positions: Sequence[int], images: Sequence[PromptImage],
                   decode: Callable[[Sequence[int]], str]) -> ImagePrompt:
    """The native stream's form: token ids with image positions (checked), the text made by decoding."""
    if len(positions) != len(images):
        raise BadRequest(f"{len(images)} images but {len(positions)} image_positions: give one position per image",
                         code="invalid_image_positions", param="image_positions")
    if any(not isinstance(p, int) or isinstance(p, bool) for p in positions) or \
            list(positions) != sorted(positions) or any(not 0 <= p <= len(ids) for p in positions):
        raise BadRequest(f"image_positions must be ascending indexes into prompt_token_ids (0..{len(ids)})",
                         code="invalid_image_positions", param="image_positions")
    placeholder = stored.modelfile.get("IMAGE_PLACEHOLDER") or DEFAULT_PLACEHOLDER
    bounds = [0, *positions, len(ids)]
    text = placeholder.join(decode(ids[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    return ImagePrompt(tuple(images), tuple(positions), text, placeholder)


def has_images(messages: Sequence[dict]) -> bool:
    return count_images(messages) > 0
