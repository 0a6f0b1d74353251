"""``image-engine convert`` for a super-resolution model: one fixed-tile ``.rknn`` and its quality report.

Calibration (int8) uses tiles of the x3-downscaled luma of the calibration images — what the model sees in
service. Quality is measured on held-out images through the service's own tiler (``Upscaler``): each image is
downscaled x3, upscaled back by onnxruntime and by each simulated build, and compared with the original
(PSNR of the luma, 3-pixel border excluded, as in the README's model table), and with bicubic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .convert_common import (
    ConvertOptions,
    PartBuild,
    PartIO,
    Progress,
    build_candidate,
    candidates_for,
    copy_file,
    export_part,
    release_all,
    write_dataset,
)
from .errors import BadInput
from .rknn_sim import prebuilt_lite_class
from .runtimes import CORE_AUTO, RknnRuntime, load_runtime, onnx_io_names
from .sr import TileGeometry, Upscaler, bicubic_upscale, resize_bicubic, rgb_to_ycbcr, tile_starts
from .train_espcn import SCALE, psnr

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TILES_PER_IMAGE = 4


@dataclass
class ImageScore:
    """PSNR (dB) of one held-out image: bicubic, onnxruntime, and each build; max abs difference to ORT."""

    name: str
    size: str
    bicubic: float
    onnxruntime: float
    builds: dict[str, float] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)


@dataclass
class SRReport:
    """What ``convert`` measured and chose for an SR model."""

    model: str
    target: str
    tile: int
    chosen: str
    reason: str
    rknn_path: Path
    calibration: str
    holdout: str
    cpu_ops: list[str]
    build_seconds: dict[str, float]
    images: list[ImageScore]

    def to_json(self) -> dict:
        return {"kind": "sr", "model": self.model, "target": self.target, "tile": self.tile, "dtype": self.chosen,
                "reason": self.reason, "rknn": str(self.rknn_path), "calibration": self.calibration,
                "holdout": self.holdout, "cpu_ops": self.cpu_ops, "build_seconds": self.build_seconds,
                "images": [vars(s) for s in self.images]}

    def markdown(self) -> str:
        dtypes = list(self.build_seconds)
        head = "| held-out image | size | bicubic | onnxruntime | " + " | ".join(dtypes) + " | " + \
            " | ".join(f"{d} max abs vs ORT" for d in dtypes) + " |"
        lines = [head, "|" + "---|" * 2 + "---:|" * (2 + 2 * len(dtypes))]
        for s in self.images:
            lines.append(f"| {s.name} | {s.size} | {s.bicubic:.2f} | {s.onnxruntime:.2f} | "
                         + " | ".join(f"{s.builds[d]:.2f}" for d in dtypes) + " | "
                         + " | ".join(f"{s.max_abs[d]:.4f}" for d in dtypes) + " |")
        return "\n".join([f"{self.model} → {self.rknn_path.name} ({self.target}, {self.tile}px tiles, "
                          f"{self.chosen}): {self.reason}", "PSNR of the luma in dB:", *lines,
                          f"on the CPU: {', '.join(self.cpu_ops) or 'nothing'}; calibration: {self.calibration}; "
                          f"held out: {self.holdout}",
                          f"serve it with SR_MODEL_PATH={self.rknn_path} SR_INPUT_SIZE={self.tile} "
                          f"SR_OUTPUT_SIZE={self.tile * SCALE}"])


def load_images(directory: Path) -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 float RGB) for every image file in ``directory``, sorted by name, cropped to x3."""
    if not directory.is_dir():
        raise BadInput(f"{directory} is not a directory of images")
    images = []
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        h, w = (n - n % SCALE for n in rgb.shape[:2])
        if h >= 3 * SCALE and w >= 3 * SCALE:
            images.append((path.stem, rgb[:h, :w]))
    if not images:
        raise BadInput(f"{directory} has no usable images ({', '.join(IMAGE_SUFFIXES)}, at least 9x9)")
    return images


def synthetic_images(seed: int, count: int = 4, size: int = 300) -> list[tuple[str, np.ndarray]]:
    """Photo-like test scenes (gradients, texture, edges), the last one dark and low in contrast — where
    int8 hurts most. Used when no image directory is given."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for i in range(count):
        planes = []
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.01, 0.09, 3)
            wave = 0.5 + 0.3 * np.sin(fy * yy + ph * 10) * np.cos(fx * xx)
            planes.append(wave + 0.06 * rng.standard_normal((size, size)))
        img = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
        img[size // 3: size // 2, size // 4: size // 2] *= 0.4
        if i == count - 1:
            img = 0.05 + 0.15 * img  # dark, low contrast
        images.append((f"synthetic-{seed}-{i}{'-dark' if i == count - 1 else ''}", img.astype(np.float32)))
    return images


def downscale_rgb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[0] // SCALE, rgb.shape[1] // SCALE
    return np.stack([resize_bicubic(rgb[..., k], h, w) for k in range(3)], axis=-1)


def calibration_tiles(images: list[tuple[str, np.ndarray]], tile: int) -> list[list[np.ndarray]]:
    """Up to TILES_PER_IMAGE spread-out tiles (1x1xTxT) of each image's downscaled luma, edge-padded."""
    samples = []
    for _, rgb in images:
        y = rgb_to_ycbcr(downscale_rgb(rgb))[..., 0]
        y = np.pad(y, ((0, max(0, tile - y.shape[0])), (0, max(0, tile - y.shape[1]))), mode="edge")
        rows, cols = tile_starts(y.shape[0], tile, tile), tile_starts(y.shape[1], tile, tile)
        starts = [(r, c) for r in rows for c in cols]
        pick = np.linspace(0, len(starts) - 1, min(TILES_PER_IMAGE, len(starts))).round().astype(int)
        for k in sorted(set(pick.tolist())):
            r, c = starts[k]
            samples.append([y[None, None, r:r + tile, c:c + tile].astype(np.float32)])
    return samples


def _image_sets(opts: ConvertOptions) -> tuple[list, str, list, str]:
    if opts.calibration is not None:
        calib, calib_desc = load_images(opts.calibration), f"{opts.calibration}"
    else:
        calib, calib_desc = synthetic_images(seed=1, size=720), "synthetic scenes (seed 1; pass --calibration DIR)"
    if opts.holdout is not None:
        held, held_desc = load_images(opts.holdout), f"{opts.holdout}"
    else:
        held, held_desc = synthetic_images(seed=2), "synthetic scenes (seed 2; pass --holdout DIR)"
    return calib, calib_desc, held, held_desc


def score_images(held: list, reference: Upscaler, builds: dict[str, Upscaler]) -> list[ImageScore]:
    scores = []
    for name, hr in held:
        lr = downscale_rgb(hr)
        y_true = rgb_to_ycbcr(hr)[..., 0]
        y_lr = rgb_to_ycbcr(lr)[..., 0]
        y_ref = np.clip(reference.upscale_y(y_lr), 0.0, 1.0)
        score = ImageScore(name, f"{hr.shape[1]}x{hr.shape[0]}",
                           psnr(rgb_to_ycbcr(bicubic_upscale(lr, SCALE))[..., 0], y_true), psnr(y_ref, y_true))
        for dtype, upscaler in builds.items():
            y = np.clip(upscaler.upscale_y(y_lr), 0.0, 1.0)
            score.builds[dtype] = psnr(y, y_true)
            score.max_abs[dtype] = float(np.max(np.abs(y - y_ref)))
        scores.append(score)
    return scores


def choose_dtype(dtype: str, scores: list[ImageScore], max_db_loss: float) -> tuple[str, str]:
    """The build to keep and why (auto: int8 unless it loses more than ``max_db_loss`` dB on some image)."""
    if dtype != "auto":
        return dtype, f"{dtype} as asked"
    worst = max(scores, key=lambda s: s.onnxruntime - s.builds["int8"])
    loss = worst.onnxruntime - worst.builds["int8"]
    if loss <= max_db_loss:
        return "int8", f"int8 loses at most {loss:.2f} dB (on {worst.name}), within the {max_db_loss:g} dB threshold"
    return "fp16", (f"fp16: int8 loses {loss:.2f} dB on {worst.name} "
                    f"({worst.onnxruntime:.2f} → {worst.builds['int8']:.2f} dB), over the {max_db_loss:g} dB threshold")


def convert_sr(onnx: Path, opts: ConvertOptions, out_dir: Path) -> SRReport:
    """Convert ``onnx`` for ``opts.tile``-pixel tiles into ``out_dir`` and report its quality."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_copy = out_dir / onnx.name  # the sibling the runtime reads tensor names from, the simulator rebuilds from
    if onnx_copy.resolve() != onnx.resolve():
        copy_file(onnx, onnx_copy)
    inputs, outputs = onnx_io_names(onnx_copy)
    if len(inputs) != 1:
        raise BadInput(f"{onnx} has inputs {inputs}; an SR model takes one luma input")
    io = PartIO(inputs, [[1, 1, opts.tile, opts.tile]], outputs)
    progress = Progress(1, opts.progress)
    progress.part(onnx.stem)
    calib, calib_desc, held, held_desc = _image_sets(opts)
    dataset, samples = None, 0
    if "int8" in candidates_for(opts.dtype):
        tiles = calibration_tiles(calib, opts.tile)
        dataset, samples = write_dataset(out_dir / f"{onnx.stem}.calibration", tiles), len(tiles)
        progress(f"calibration set: {samples} tiles from {len(calib)} image(s)")
    candidates: dict[str, PartBuild] = {}
    try:
        for dtype in candidates_for(opts.dtype):
            candidates[dtype] = build_candidate(onnx_copy, io, dtype, opts, dataset, progress)
        scores = _measure(onnx_copy, opts, held, candidates)
        progress(f"measured {len(held)} held-out image(s)")
        chosen, reason = choose_dtype(opts.dtype, scores, opts.auto_max_db_loss)
        rknn_path = out_dir / f"{onnx.stem}.rknn"
        quality = {"psnr_db": {s.name: {"onnxruntime": s.onnxruntime, **s.builds} for s in scores}}
        export_part(candidates[chosen], rknn_path, onnx_copy, io, "sr", opts, dataset, samples, quality, reason)
        progress(f"wrote {rknn_path} ({reason})")
    finally:
        release_all(candidates)
    return SRReport(onnx.name, opts.target, opts.tile, chosen, reason, rknn_path, calib_desc, held_desc,
                    candidates[chosen].built.cpu_ops, {d: round(c.seconds, 2) for d, c in candidates.items()}, scores)


def _measure(onnx_copy: Path, opts: ConvertOptions, held: list, candidates: dict[str, PartBuild]) -> list:
    geometry = TileGeometry(opts.tile, SCALE)
    reference = load_runtime(onnx_copy, "onnxruntime")
    sims = {d: RknnRuntime(onnx_copy.with_suffix(".rknn"), prebuilt_lite_class(c.built), CORE_AUTO)
            for d, c in candidates.items()}
    try:
        return score_images(held, Upscaler(reference, geometry),
                            {d: Upscaler(rt, geometry) for d, rt in sims.items()})
    finally:
        reference.close()
        for rt in sims.values():
            rt.close()

