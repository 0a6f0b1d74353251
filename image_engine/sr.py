"""Super-resolution math: YCbCr, ESPCN on Y in overlapping blended tiles, bicubic chroma, passes in float.

Images here are float32 arrays in [0, 1], shaped HxWx3 (RGB) or HxWx4 (RGBA). Nothing is quantised between
passes: callers encode once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
from PIL import Image

from .errors import RuntimeFailure

if TYPE_CHECKING:
    from .runtimes import ModelRuntime
    from .workers import CancelToken

# Full-range BT.601 (the JPEG/JFIF convention, and what super-resolution-10 was trained with).
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]], dtype=np.float32)
# (Cb, Cr) weights of R, G and B, whose Y weight is 1: the exact JFIF constants of the inverse.
_RGB_FROM_CHROMA = ((0.0, 1.402), (-0.344136, -0.714136), (1.772, 0.0))
_YCC_TO_RGB = np.array([[1.0, wb, wr] for wb, wr in _RGB_FROM_CHROMA], dtype=np.float32)
_CHROMA_OFFSET = np.array([0.0, 0.5, 0.5], dtype=np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 float RGB in [0, 1] → HxWx3 float32 YCbCr in [0, 1] (chroma centred on 0.5)."""
    return (rgb.astype(np.float32, copy=False) @ _RGB_TO_YCC.T) + _CHROMA_OFFSET


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; the result is not clipped."""
    return (ycc.astype(np.float32, copy=False) - _CHROMA_OFFSET) @ _YCC_TO_RGB.T


@dataclass
class Planes:
    """An image as separate float32 planes: luma, the two chroma planes and an optional alpha."""

    y: np.ndarray
    cb: np.ndarray
    cr: np.ndarray
    alpha: Optional[np.ndarray] = None

    @classmethod
    def from_image(cls, image: np.ndarray) -> "Planes":
        """Split an HxWx3/4 RGB(A) image (float in [0, 1], or uint8) into YCbCr (+ alpha) float planes."""
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 or HxWx4 image, got shape {image.shape}")
        unit = 1.0 / 255.0 if image.dtype == np.uint8 else 1.0
        rgb = [image[..., k].astype(np.float32) for k in range(3)]
        y, cb, cr = (sum((w * unit) * p for w, p in zip(row, rgb, strict=True)) + offset
                     for row, offset in zip(_RGB_TO_YCC.tolist(), _CHROMA_OFFSET.tolist(), strict=True))
        alpha = image[..., 3].astype(np.float32) * np.float32(unit) if image.shape[2] == 4 else None
        return cls(y.astype(np.float32, copy=False), cb.astype(np.float32, copy=False),
                   cr.astype(np.float32, copy=False), alpha)

    def to_image(self) -> np.ndarray:
        """Merge back into an HxWx3/4 float RGB(A) image, clipped to [0, 1]."""
        channels = 3 if self.alpha is None else 4
        out = np.empty(self.y.shape + (channels,), np.float32)
        cb, cr = self.cb - 0.5, self.cr - 0.5
        for k, (wb, wr) in enumerate(_RGB_FROM_CHROMA):
            out[..., k] = self.y + wb * cb + wr * cr
        if self.alpha is not None:
            out[..., 3] = self.alpha
        return np.clip(out, 0.0, 1.0, out=out)

    def to_pil(self) -> Image.Image:
        """Merge into an 8-bit RGB(A) Pillow image: the one rounding step of the whole pipeline.

        Works plane by plane with the chroma offset folded into constants: a few passes over memory
        instead of the dozen a float HxWxC intermediate would take.
        """
        channels = []
        acc, term = np.empty_like(self.y), np.empty_like(self.y)
        for wb, wr in _RGB_FROM_CHROMA:
            np.multiply(self.y, 255.0, out=acc)
            # 0.5 rounds to nearest once truncated; the -0.5 chroma offsets are folded in as constants.
            acc += 0.5 - 127.5 * (wb + wr)
            for w, plane in ((wb, self.cb), (wr, self.cr)):
                if w:
                    acc += np.multiply(plane, 255.0 * w, out=term)
            channels.append(np.clip(acc, 0.0, 255.0, out=acc).astype(np.uint8))
        if self.alpha is not None:
            np.multiply(self.alpha, 255.0, out=acc)
            acc += 0.5
            channels.append(np.clip(acc, 0.0, 255.0, out=acc).astype(np.uint8))
        mode = "RGB" if len(channels) == 3 else "RGBA"
        return Image.merge(mode, [Image.fromarray(c) for c in channels])


def resize_bicubic(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one float plane with bicubic interpolation, in float (no 8-bit rounding)."""
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` (>= tile); the last one ends flush."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, margin: int, blend: int, scale: int) -> np.ndarray:
    """1-D weights over a tile's output: 0 on the ``margin`` context, linear ramps over ``blend``, 1 inside.

    Neighbouring tiles' ramps overlap exactly and sum to one, so blended values equal the unblended ones
    wherever the tiles agree (which they do when ``margin`` covers the model's receptive field).
    """
    n = tile * scale
    m, b = margin * scale, blend * scale
    w = np.ones(n, dtype=np.float32)
    w[:m] = 0.0
    w[n - m:] = 0.0
    ramp = np.arange(1, b + 1, dtype=np.float32) / (b + 1)
    w[m:m + b] = ramp
    w[n - m - b:n - m] = ramp[::-1]
    return w


@dataclass(frozen=True)
class TileGeometry:
    """How an image is cut: ``tile`` input pixels per side (None: one run on the whole image)."""

    tile: Optional[int]
    scale: int = 3
    margin: int = 6
    blend: int = 6

    def __post_init__(self):
        if self.tile is not None and self.tile - 2 * self.margin - self.blend < 1:
            raise ValueError(f"tile {self.tile} too small for margin {self.margin} and blend {self.blend}")

    def tile_count(self, height: int, width: int) -> int:
        """Number of model runs one pass over an image of this size takes."""
        if self.tile is None:
            return 1
        ph, pw = (max(n + 2 * self.margin, self.tile) for n in (height, width))
        stride = self.tile - 2 * self.margin - self.blend
        return len(tile_starts(ph, self.tile, stride)) * len(tile_starts(pw, self.tile, stride))


class Upscaler:
    """Runs an ESPCN-style model (input "1x1xHxW" Y, output "1x1x(sH)x(sW)") over images of any size.

    ``on_tile`` is called after each model run (for progress and statistics).
    """

    def __init__(self, runtime: ModelRuntime, geometry: TileGeometry,
                 on_tile: Optional[Callable[[], None]] = None):
        self.runtime = runtime
        self.geometry = geometry
        self.on_tile = on_tile
        self._input = runtime.input_names[0] if runtime.input_names else "input"

    def run_model(self, y: np.ndarray) -> np.ndarray:
        """One model run on an HxW plane; returns the (sH)x(sW) plane."""
        s = self.geometry.scale
        out = self.runtime.run({self._input: y[None, None].astype(np.float32, copy=False)})[0]
        want = (1, 1, y.shape[0] * s, y.shape[1] * s)
        if tuple(out.shape) != want:
            raise RuntimeFailure(f"model {self.runtime.path.name} returned shape {tuple(out.shape)} for "
                                 f"input {tuple(y.shape)}; expected {want} (is the scale {s} right?)")
        if self.on_tile is not None:
            self.on_tile()
        return out[0, 0]

    def upscale_y(self, y: np.ndarray, token: Optional[CancelToken] = None) -> np.ndarray:
        """Super-resolve the luma plane ``y`` (HxW float) to (sH)x(sW), tiled and blended, unclipped."""
        g = self.geometry
        h, w = y.shape
        padded = np.pad(y.astype(np.float32, copy=False), g.margin, mode="edge")
        if g.tile is None:
            out = self.run_model(padded)
        else:
            out = self._run_tiles(padded, token)
        m = g.margin * g.scale
        return out[m:m + h * g.scale, m:m + w * g.scale]

    def _run_tiles(self, padded: np.ndarray, token: Optional[CancelToken]) -> np.ndarray:
        g = self.geometry
        t, s = g.tile, g.scale
        # Images smaller than a tile are padded up to one (edge values: no dark borders bleed in).
        ph, pw = max(padded.shape[0], t), max(padded.shape[1], t)
        padded = np.pad(padded, ((0, ph - padded.shape[0]), (0, pw - padded.shape[1])), mode="edge")
        stride = t - 2 * g.margin - g.blend
        rows, cols = tile_starts(ph, t, stride), tile_starts(pw, t, stride)
        win = blend_window(t, g.margin, g.blend, s)
        weights = win[:, None] * win[None, :]
        acc = np.zeros((ph * s, pw * s), dtype=np.float32)
        for r in rows:
            for c in cols:
                if token is not None:
                    token.raise_if_cancelled()
                out = self.run_model(np.ascontiguousarray(padded[r:r + t, c:c + t]))
                weighted = np.multiply(out, weights, out=out if out.flags.writeable else None)
                acc[r * s:(r + t) * s, c * s:(c + t) * s] += weighted
        # The weights are separable, so their per-pixel sum is an outer product of two 1-D sums.
        row_sum, col_sum = np.zeros(ph * s, np.float32), np.zeros(pw * s, np.float32)
        for r in rows:
            row_sum[r * s:(r + t) * s] += win
        for c in cols:
            col_sum[c * s:(c + t) * s] += win
        # Zero sums only occur in the outer margin, which the caller crops away.
        with np.errstate(divide="ignore"):
            inv_row, inv_col = np.where(row_sum > 0, 1.0 / row_sum, 0.0), np.where(col_sum > 0, 1.0 / col_sum, 0.0)
        acc *= inv_row.astype(np.float32)[:, None]
        acc *= inv_col.astype(np.float32)[None, :]
        return acc

    def upscale_luma(self, y: np.ndarray, passes: int = 1,
                     token: Optional[CancelToken] = None) -> np.ndarray:
        """``passes`` model passes over the luma plane, kept in float and clipped to [0, 1] after each.

        This is the only part that needs the model; it is what a worker (an NPU core) runs.
        """
        for _ in range(passes):
            out = self.upscale_y(y, token)
            y = np.clip(out, 0.0, 1.0, out=out)
        return y

    def upscale(self, image: np.ndarray, passes: int = 1,
                token: Optional[CancelToken] = None) -> np.ndarray:
        """Upscale an HxWx3/4 float image by ``scale ** passes``: model on Y, bicubic on chroma and alpha."""
        planes = Planes.from_image(image)
        y = self.upscale_luma(planes.y, passes, token)
        return upscale_chroma(planes, y, self.geometry.scale, passes).to_image()


def upscale_chroma(planes: Planes, y: Optional[np.ndarray], scale: int, passes: int) -> Planes:
    """Combine an upscaled luma plane with chroma and alpha upscaled bicubically, ``passes`` times x scale.

    With ``y`` None the result's luma is left empty (for callers that fill it in later).
    """
    cb, cr, alpha = planes.cb, planes.cr, planes.alpha
    for _ in range(passes):
        h, w = cb.shape[0] * scale, cb.shape[1] * scale
        cb, cr = (np.clip(resize_bicubic(p, h, w), 0.0, 1.0) for p in (cb, cr))
        if alpha is not None:
            alpha = np.clip(resize_bicubic(alpha, h, w), 0.0, 1.0)
    if y is not None and cb.shape != y.shape:
        raise ValueError(f"luma {y.shape} and chroma {cb.shape} sizes differ")
    return Planes(y, cb, cr, alpha)


def bicubic_upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Plain bicubic upscaling of an HxWxC float image (the baseline the model must beat)."""
    h, w = image.shape[0] * factor, image.shape[1] * factor
    planes = [resize_bicubic(image[..., k], h, w) for k in range(image.shape[2])]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
