"""Images in chat requests, once for every route family: OpenAI ``image_url`` data URLs, Ollama's base64
``images``, the native stream's ``images``. Nothing is ever fetched: a remote URL is a 400.

A message that carries images comes out of the parsers as ``{"role", "content", "images": [bytes, ...]}``
where ``content`` holds :data:`IMAGE_MARK` where each image stands (in order). :func:`check_image` then
looks at one image's bytes under :class:`ImageLimits`: size in bytes first, then the pixel count read from
the header (PIL reads it without decoding), and only then the full decode, so a decompression bomb costs
nothing. Errors are :class:`~rk_common.errors.BadRequest` with a code naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence

from .errors import BadRequest

#: stands for one image inside a message's text (a private-use character: user text never keeps one)
IMAGE_MARK = "\ue000"
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.ASCII)


@dataclass(frozen=True)
class ImageLimits:
    """What one request may bring: images in all, bytes per image, pixels per image."""

    max_images: int = 4
    max_bytes: int = 4 * 2**20
    max_pixels: int = 16 * 2**20


@dataclass(frozen=True)
class CheckedImage:
    """A decoded image (RGB) and the hash of the bytes it came from."""

    image: Any  # PIL.Image.Image
    digest: str
    width: int
    height: int
    format: str


def image_error(message: str, code: str = "invalid_image", param: str = "messages") -> BadRequest:
    return BadRequest(message, code=code, param=param)


def decode_base64(text: Any, where: str, param: str = "messages") -> bytes:
    """The bytes of a base64 image (whitespace allowed); a 400 naming ``where`` otherwise."""
    if not isinstance(text, str) or not text:
        raise image_error(f"{where} must be a non-empty base64 string", param=param)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise image_error(f"{where} is not valid base64", param=param) from None


def image_from_url(url: Any, where: str) -> bytes:
    """The bytes of an ``image_url``: only ``data:`` URLs; a remote URL is refused, never fetched."""
    if not isinstance(url, str) or not url:
        raise image_error(f"{where}.image_url.url must be a string: a data URL (data:image/png;base64,...)")
    match = _DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme in ("http", "https", "ftp", "file"):
            raise image_error(f"{where}.image_url.url is a remote URL ({scheme}:): this server fetches nothing; "
                              "send the image inline as a data URL (data:image/png;base64,...)", "remote_image_url")
        raise image_error(f"{where}.image_url.url must be a data URL (data:image/png;base64,...)")
    if match.group("mime") and not match.group("mime").startswith("image/"):
        raise image_error(f"{where}.image_url.url has media type {match.group('mime')}, not an image")
    if not match.group("b64"):
        raise image_error(f"{where}.image_url.url must be base64 (data:image/...;base64,...)")
    return decode_base64(url[match.end():], f"{where}.image_url.url")


def content_parts(parts: Sequence[Any], where: str) -> tuple:
    """OpenAI content parts → (text with :data:`IMAGE_MARK` per image, image bytes in order)."""
    text: List[str] = []
    images: List[bytes] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text.append(part["text"].replace(IMAGE_MARK, ""))
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            images.append(image_from_url(url, f"{where}.content[{j}]"))
            text.append(IMAGE_MARK)
        else:
            raise image_error(f"{where}.content[{j}]: a part must be {{\"type\": \"text\", \"text\": str}} or "
                              "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/...\"}}",
                              "invalid_messages")
    return "".join(text), images


def count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(m.get("images") or ()) for m in messages)


def check_count(n: int, limits: ImageLimits, param: str = "messages") -> None:
    if n > limits.max_images:
        raise image_error(f"{n} images in the request; at most {limits.max_images} are taken", "too_many_images",
                          param)


def check_image(data: bytes, limits: ImageLimits, where: str = "image", param: str = "messages") -> CheckedImage:
    """Decode one image under ``limits``: bytes, then the header's pixel count, then the pixels."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise image_error(f"{where} is {len(data)} bytes; at most {limits.max_bytes} are taken", "image_too_large",
                          param)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError):
        raise image_error(f"{where} is not an image this server can read (PNG, JPEG, WebP, GIF, BMP)",
                          param=param) from None
    except Image.DecompressionBombError:
        raise image_error(f"{where} declares more pixels than any image taken here (a decompression bomb)",
                          "image_too_large", param) from None
    width, height = img.size
    if width < 1 or height < 1 or width * height > limits.max_pixels:
        raise image_error(f"{where} is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} are "
                          "taken", "image_too_large", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = img.convert("RGB")  # the full decode, now known to be bounded
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise image_error(f"{where} is damaged: its pixels cannot be decoded", param=param) from None
    return CheckedImage(rgb, hashlib.sha256(data).hexdigest(), width, height, img.format or "?")
