"""The super-resolution math, called directly: seams, sizes, alpha, passes in float, decoding limits."""

from __future__ import annotations

import numpy as np
import pytest

from image_engine.errors import BadInput, TooLarge
from image_engine.sr import (
    TileGeometry,
    Upscaler,
    blend_window,
    resize_bicubic,
    rgb_to_ycbcr,
    tile_starts,
    ycbcr_to_rgb,
)
from image_engine.sr_io import check_pixels, image_to_array, open_image, to_uint8

from .imgutil import make_image, png_header_only, to_png


def tile_borders(length: int, geometry: TileGeometry) -> list[int]:
    """Input rows/columns (in image coordinates) where one tile's contribution hands over to the next."""
    stride = geometry.tile - 2 * geometry.margin - geometry.blend
    padded = max(length + 2 * geometry.margin, geometry.tile)
    return [s + geometry.tile - geometry.margin - geometry.margin for s in tile_starts(padded, geometry.tile,
                                                                                       stride)[:-1]]


@pytest.mark.parametrize("tile", [224, 40])
def test_tiled_output_matches_whole_image_run_at_tile_borders(ort_runtime, tile):
    y = rgb_to_ycbcr(make_image(300, 517, seed=1))[..., 0]
    geometry = TileGeometry(tile=tile)
    tiled = Upscaler(ort_runtime, geometry).upscale_y(y)
    whole = Upscaler(ort_runtime, TileGeometry(tile=None)).upscale_y(y)
    assert tiled.shape == whole.shape == (900, 1551)
    rows, cols = tile_borders(300, geometry), tile_borders(517, geometry)
    assert cols, "the image must span several tiles for this test to mean anything"
    s = geometry.scale
    for c in cols:  # a band of output pixels around every vertical seam
        band = slice(max(0, (c - 2) * s), (c + 2) * s)
        np.testing.assert_allclose(tiled[:, band], whole[:, band], atol=1e-4)
    for r in rows:
        band = slice(max(0, (r - 2) * s), (r + 2) * s)
        np.testing.assert_allclose(tiled[band], whole[band], atol=1e-4)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_tiles_without_context_margin_do_show_seams(ort_runtime):
    # The control for the seam test: cutting without margin (what the seed server did) is measurably off.
    y = rgb_to_ycbcr(make_image(120, 200, seed=2))[..., 0]
    whole = Upscaler(ort_runtime, TileGeometry(tile=None, margin=0, blend=0)).upscale_y(y)
    naive = Upscaler(ort_runtime, TileGeometry(tile=40, margin=0, blend=0)).upscale_y(y)
    assert np.abs(naive - whole).max() > 1e-2


@pytest.mark.parametrize("length,tile,margin,blend", [(1, 32, 6, 6), (50, 32, 6, 6), (517, 224, 6, 6),
                                                      (100, 40, 4, 0), (97, 30, 2, 9)])
def test_blend_windows_cover_every_pixel_and_sum_to_one_in_overlaps(length, tile, margin, blend):
    scale = 3
    padded = max(length + 2 * margin, tile)
    win = blend_window(tile, margin, blend, scale)
    total = np.zeros(padded * scale, np.float32)
    for s in tile_starts(padded, tile, tile - 2 * margin - blend):
        total[s * scale:(s + tile) * scale] += win
    image = total[margin * scale:(margin + length) * scale]
    assert image.min() > 0, "every image pixel must get weight from some tile"
    inner = image[blend * scale:-blend * scale or None]  # away from the image ends every overlap sums to 1
    if inner.size and padded - tile > 0 and (padded - tile) % (tile - 2 * margin - blend) == 0:
        np.testing.assert_allclose(inner, 1.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (17, 300), (224, 224), (225, 223), (5, 7), (300, 17)])
@pytest.mark.parametrize("channels", [3, 4])
def test_any_size_and_alpha_upscale(ort_runtime, shape, channels):
    img = make_image(*shape, channels=channels, seed=3)
    out = Upscaler(ort_runtime, TileGeometry(tile=224)).upscale(img)
    assert out.shape == (shape[0] * 3, shape[1] * 3, channels)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if channels == 4:  # alpha is upscaled on its own, bicubic, not through the luma model
        np.testing.assert_allclose(out[..., 3], np.clip(resize_bicubic(img[..., 3], *out.shape[:2]), 0, 1),
                                   atol=1e-6)
    # The upscaled image, shrunk back, resembles the input (it is the same picture, not noise).
    if min(shape) >= 5:
        back = np.stack([resize_bicubic(out[..., k], *shape) for k in range(channels)], axis=-1)
        assert np.abs(back - img).mean() < 0.06


def test_magnitude_two_is_two_passes_without_quantisation(ort_runtime):
    img = 0.2 + 0.6 * make_image(40, 56, seed=4)  # inside the RGB gamut, so YCbCr round trips are exact
    up = Upscaler(ort_runtime, TileGeometry(tile=224))
    twice = up.upscale(img, passes=2)
    assert twice.shape == (360, 504, 3)
    np.testing.assert_allclose(twice, up.upscale(up.upscale(img)), atol=2e-5)
    requantised = up.upscale(to_uint8(up.upscale(img)).astype(np.float32) / 255.0)
    assert np.abs(requantised - twice).max() > 1e-3, "an 8-bit round trip between passes would show"


def test_colour_conversion_round_trips():
    rgb = make_image(16, 16, seed=5)
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    grey = np.full((2, 2, 3), 0.25, np.float32)
    np.testing.assert_allclose(rgb_to_ycbcr(grey), [[[0.25, 0.5, 0.5]] * 2] * 2, atol=1e-6)


def test_tile_count_matches_model_runs(ort_runtime):
    runs = []
    geometry = TileGeometry(tile=40)
    Upscaler(ort_runtime, geometry, on_tile=lambda: runs.append(1)).upscale_y(np.zeros((100, 61), np.float32))
    assert len(runs) == geometry.tile_count(100, 61) > 1


def test_pixel_limit_names_the_limit_and_the_pass():
    check_pixels(1000, 1000, 1, 3, 1_000_000)
    with pytest.raises(TooLarge, match="SR_MAX_PIXELS=999999"):
        check_pixels(1000, 1000, 1, 3, 999_999)
    with pytest.raises(TooLarge, match="magnitude 2"):
        check_pixels(400, 400, 2, 3, 1_000_000)


def test_decoding_rejects_declared_size_before_decoding():
    with pytest.raises(TooLarge, match="SR_MAX_PIXELS"):
        open_image(png_header_only(5000, 5000), 1, 3, 1_000_000)  # under Pillow's own limit, over ours
    with pytest.raises(TooLarge, match="decompression bomb"):
        open_image(png_header_only(30000, 30000), 1, 3, 10**10)  # Pillow's bomb check fires first


@pytest.mark.parametrize("data,message", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                          (None, "corrupt")])
def test_decoding_rejects_bad_uploads(data, message):
    if data is None:
        data = to_png(make_image(32, 32))[:-40]  # truncated
        data = data[:len(data) // 2]
    with pytest.raises(BadInput, match=message):
        open_image(data, 1, 3, 1_000_000)


def test_palette_with_transparency_keeps_alpha():
    from PIL import Image

    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    arr = image_to_array(img)
    assert arr.shape == (4, 4, 4) and arr[..., 3].max() == 0.0
