"""Image bytes in and out of the super-resolution path: safe decoding with size limits, one final encode."""

from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInput, TooLarge

# Accepted ``out_format`` values → (Pillow format, MIME type, canonical name).
OUT_FORMATS = {
    "png": ("PNG", "image/png", "png"),
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "jpg": ("JPEG", "image/jpeg", "jpeg"),
    "webp": ("WEBP", "image/webp", "webp"),
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def check_pixels(width: int, height: int, passes: int, scale: int, max_pixels: int) -> None:
    """Raise :class:`TooLarge` if any of the ``passes`` would feed more than ``max_pixels`` to the model."""
    pixels = width * height
    last = pixels * (scale * scale) ** (passes - 1)  # the input of the last pass is the largest
    if pixels > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {pixels} pixels; the limit is SR_MAX_PIXELS="
                       f"{max_pixels} pixels")
    if last > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {pixels} pixels; with magnitude {passes} pass {passes} "
                       f"would process {last} pixels, over the limit SR_MAX_PIXELS={max_pixels} pixels")


def open_image(data: bytes, passes: int, scale: int, max_pixels: int) -> Image.Image:
    """Decode an upload, checking its declared size against the limit before decoding any pixel."""
    if not data:
        raise BadInput("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image rejected as a decompression bomb ({exc}); the limit is SR_MAX_PIXELS="
                       f"{max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise BadInput("the upload is not an image in a format Pillow reads (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(f"the upload is not a readable image: {exc}") from None
    check_pixels(img.width, img.height, passes, scale, max_pixels)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadInput(f"the {img.format or 'image'} file is corrupt or truncated: {exc}") from None
    return img


def image_to_uint8(img: Image.Image) -> np.ndarray:
    """A Pillow image as HxWx3 (or HxWx4 when it has transparency) uint8, or float32 for 16-bit greyscale."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image_to_array(img)
    has_alpha = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))


def image_to_array(img: Image.Image) -> np.ndarray:
    """A Pillow image as HxWx3 (or HxWx4 when it has transparency) float32 in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale keeps its precision
        grey = np.asarray(img, dtype=np.float32) / (65535.0 if img.mode.startswith("I;16") else 255.0)
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=-1)
    has_alpha = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round a [0, 1] float image to 8 bits (the one quantisation of the whole pipeline)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, out_format: str, quality: int = 92, png_compression: int = 1) -> bytes:
    """Encode an HxWx3/4 float image in [0, 1]; JPEG has no alpha, so transparent images are flattened
    onto white."""
    if out_format == "jpeg" and image.shape[2] == 4:
        alpha = image[..., 3:4]
        image = image[..., :3] * alpha + (1.0 - alpha)
    return encode_pil(Image.fromarray(to_uint8(image)), out_format, quality, png_compression)


def encode_pil(img: Image.Image, out_format: str, quality: int = 92, png_compression: int = 1) -> bytes:
    """Encode an 8-bit RGB(A) Pillow image (RGBA is flattened onto white for JPEG)."""
    pil_format = OUT_FORMATS[out_format][0]
    if pil_format == "JPEG" and img.mode == "RGBA":
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    buf = io.BytesIO()
    options: dict = {"compress_level": png_compression} if pil_format == "PNG" else {"quality": quality}
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def parse_out_format(value: Optional[str]) -> str:
    """The canonical output format name, or :class:`BadInput` listing the accepted ones."""
    key = (value or "png").strip().lower()
    if key not in OUT_FORMATS:
        raise BadInput(f"out_format {value!r} is not supported; use png, jpeg or webp")
    return OUT_FORMATS[key][2]
