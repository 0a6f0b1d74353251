"""Train the default super-resolution model: a small ESPCN x3 on the sample photographs of scikit-image.

Run by hand (needs the ``train`` extra)::

    python -m image_engine.train_espcn --minutes 5 --out image_engine/models/espcn_x3.onnx

The exported ONNX keeps the contract of the ONNX model zoo's super-resolution-10 (input "input" 1x1xHxW
float32 luma in [0, 1], output 1x1x3Hx3W), so the same RKNN conversion applies; H and W are dynamic axes
for the host runtime. Afterwards the script measures PSNR on held-out images against bicubic upscaling,
through the same tiled code path the server uses, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from .sr import TileGeometry, Upscaler, bicubic_upscale, resize_bicubic, rgb_to_ycbcr

SCALE = 3
# Photographs only (no synthetic test patterns). The held-out images are never seen in training.
TRAIN_IMAGES = ("chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass",
                "gravel", "page", "text", "clock", "moon", "cell", "stereo_motorcycle")
HELD_OUT_IMAGES = ("astronaut", "coffee", "camera", "coins")


def load_sample(name: str) -> np.ndarray:
    """A scikit-image sample as HxWx3 float32 RGB in [0, 1], cropped to a multiple of the scale."""
    from skimage import data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pairs: take the left view
        img = img[0]
    img = np.asarray(img, dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    h, w = (n - n % SCALE for n in img.shape[:2])
    return img[:h, :w]


def downscale(plane: np.ndarray) -> np.ndarray:
    """The degradation the model learns to invert: bicubic (antialiased) downscaling by the scale."""
    return resize_bicubic(plane, plane.shape[0] // SCALE, plane.shape[1] // SCALE)


def build_model():
    """ESPCN (Shi et al. 2016): 5x5x64, 3x3x32, 3x3x9 convolutions and a x3 pixel shuffle (~23k weights)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, SCALE * SCALE, 3, padding=1),
        nn.PixelShuffle(SCALE),
    )


def sample_batch(pairs, rng: np.random.Generator, batch: int, lr_size: int):
    """Random aligned (LR, HR) crops with flips and 90-degree turns."""
    lrs, hrs = [], []
    for _ in range(batch):
        lr, hr = pairs[rng.integers(len(pairs))]
        y = rng.integers(lr.shape[0] - lr_size + 1)
        x = rng.integers(lr.shape[1] - lr_size + 1)
        a = lr[y:y + lr_size, x:x + lr_size]
        b = hr[y * SCALE:(y + lr_size) * SCALE, x * SCALE:(x + lr_size) * SCALE]
        k = int(rng.integers(4))
        a, b = np.rot90(a, k), np.rot90(b, k)
        if rng.integers(2):
            a, b = a[:, ::-1], b[:, ::-1]
        lrs.append(a.copy())
        hrs.append(b.copy())
    return np.stack(lrs)[:, None], np.stack(hrs)[:, None]


def train(minutes: float, seed: int, batch: int = 32, lr_size: int = 32):
    """Train with Adam and a cosine learning-rate decay over a wall-clock budget; returns the model."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = []
    for name in TRAIN_IMAGES:
        y = rgb_to_ycbcr(load_sample(name))[..., 0]
        pairs.append((downscale(y), y))
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    budget, start, step = minutes * 60.0, time.monotonic(), 0
    crop = 4 * SCALE  # the loss ignores the zero-padded border, which the tiler never uses
    while (elapsed := time.monotonic() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * elapsed / budget))
        lr_b, hr_b = sample_batch(pairs, rng, batch, lr_size)
        pred = model(torch.from_numpy(lr_b))
        loss = torch.nn.functional.mse_loss(pred[..., crop:-crop, crop:-crop],
                                            torch.from_numpy(hr_b)[..., crop:-crop, crop:-crop])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step:5d}  {elapsed:6.1f}s  loss {loss.item():.6f}  "
                  f"psnr~{-10 * math.log10(max(loss.item(), 1e-12)):.2f} dB", flush=True)
    print(f"trained {step} steps in {time.monotonic() - start:.0f}s", flush=True)
    return model.eval()


def export(model, out: Path) -> None:
    """Write the model as ONNX with the super-resolution-10 names and dynamic spatial axes."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, 1, 224, 224), str(out), input_names=["input"],
                      output_names=["output"], opset_version=13, dynamo=False,
                      dynamic_axes={"input": {2: "height", 3: "width"},
                                    "output": {2: "out_height", 3: "out_width"}})
    print(f"wrote {out} ({out.stat().st_size} bytes)", flush=True)


def psnr(a: np.ndarray, b: np.ndarray, shave: int = SCALE) -> float:
    """PSNR in dB of two [0, 1] planes, ignoring a border of ``shave`` pixels (the usual SR convention)."""
    d = a[shave:-shave, shave:-shave] - b[shave:-shave, shave:-shave]
    return float(10 * math.log10(1.0 / max(float(np.mean(d.astype(np.float64) ** 2)), 1e-12)))


def evaluate(model_path: Path, tile: int = 224) -> list[tuple[str, str, float, float]]:
    """PSNR (luma) of bicubic and of the model, on each held-out image, through the server's tiler."""
    from .runtimes import load_runtime

    runtime = load_runtime(model_path, "onnxruntime")
    upscaler = Upscaler(runtime, TileGeometry(tile=tile, scale=SCALE))
    rows = []
    for name in HELD_OUT_IMAGES:
        hr = load_sample(name)
        lr = np.stack([downscale(hr[..., k]) for k in range(3)], axis=-1)
        y_true = rgb_to_ycbcr(hr)[..., 0]
        y_bic = rgb_to_ycbcr(bicubic_upscale(lr, SCALE))[..., 0]
        y_sr = rgb_to_ycbcr(upscaler.upscale(lr))[..., 0]
        rows.append((name, f"{hr.shape[1]}x{hr.shape[0]}", psnr(y_bic, y_true), psnr(y_sr, y_true)))
    runtime.close()
    return rows


def markdown_table(rows) -> str:
    """The PSNR table as it appears in the README."""
    lines = ["| held-out image | size | bicubic PSNR (dB) | ESPCN x3 PSNR (dB) | gain (dB) |",
             "|---|---|---:|---:|---:|"]
    for name, size, bic, sr in rows:
        lines.append(f"| {name} | {size} | {bic:.2f} | {sr:.2f} | {sr - bic:+.2f} |")
    mb, ms = (float(np.mean([r[k] for r in rows])) for k in (2, 3))
    lines.append(f"| **mean** | | **{mb:.2f}** | **{ms:.2f}** | **{ms - mb:+.2f}** |")
    return "\n".join(lines)


def before_after_figure(model_path: Path, out: Path, name: str = "astronaut",
                        box: tuple[int, int, int, int] = (48, 14, 60, 60)) -> None:
    """Save a crop (``box`` = x, y, w, h in input pixels) of a held-out image: the downscaled input shown
    with nearest-neighbour, bicubic, the default ESPCN, and the original."""
    from PIL import Image, ImageDraw

    from .runtimes import load_runtime

    hr = load_sample(name)
    lr = np.stack([downscale(hr[..., k]) for k in range(3)], axis=-1)
    runtime = load_runtime(model_path, "onnxruntime")
    sr = Upscaler(runtime, TileGeometry(tile=224, scale=SCALE)).upscale(lr)
    runtime.close()
    panels = {"input (nearest)": np.repeat(np.repeat(lr, SCALE, 0), SCALE, 1),
              "bicubic": bicubic_upscale(lr, SCALE), "ESPCN x3 (default model)": sr, "original": hr}
    x, y, w, h = (v * SCALE for v in box)
    pad, label = 8, 22
    canvas = Image.new("RGB", (len(panels) * (w + pad) + pad, h + label + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(panels.items()):
        crop = np.clip(np.rint(img[y:y + h, x:x + w] * 255), 0, 255).astype(np.uint8)
        left = pad + i * (w + pad)
        canvas.paste(Image.fromarray(crop), (left, label))
        draw.text((left, 4), title, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models" / "espcn_x3.onnx")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="wall-clock training budget (the step count, hence the result, depends on the CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate --out")
    parser.add_argument("--figure", type=Path, default=None, help="also save a before/after crop here")
    args = parser.parse_args(argv)
    if not args.evaluate_only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        export(train(args.minutes, args.seed), args.out)
    print(markdown_table(evaluate(args.out)))
    if args.figure is not None:
        before_after_figure(args.out, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
