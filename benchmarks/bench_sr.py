"""Super-resolution throughput: the HTTP service against raw onnxruntime on the same tiles, in one run.

For one photo-sized test image the benchmark

1. cuts the luma plane exactly as the service does (same margin, blend and tile size) and times bare
   ``InferenceSession.run`` calls over those tiles: the raw runtime's tiles/s;
2. starts ``image-engine serve`` (one worker, same thread count) and times ``POST /superres`` end to end
   (upload, decode, colour conversion, tiles, blending, bicubic chroma, encode, download);
3. repeats step 2 with no overlap (margin 0, blend 0) to show what the seam-free tiling costs.

The ratio service/raw is the number to watch (goal >= 0.9). Run:
``python -m benchmarks.bench_sr`` or ``python benchmarks/bench_sr.py`` (prints a Markdown table).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(REPO))

from image_engine.config import DEFAULT_SR_MODEL  # noqa: E402
from image_engine.runtimes import load_runtime  # noqa: E402
from image_engine.sr import TileGeometry, Upscaler, rgb_to_ycbcr, tile_starts  # noqa: E402


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB image: smooth gradients, edges and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.5 + 0.35 * np.sin(yy * f1 + p) * np.cos(xx * f2)
              for f1, f2, p in rng.uniform(0.005, 0.05, (3, 3))]
    img = np.stack(planes, axis=-1) + 0.03 * rng.standard_normal((height, width, 3))
    img[height // 4: height // 2, width // 3: 2 * width // 3] *= 0.5
    return np.clip(img, 0, 1).astype(np.float32)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def service_tiles(y: np.ndarray, geometry: TileGeometry) -> list[np.ndarray]:
    """The exact model inputs the service's tiler produces for the luma plane ``y``."""
    t, m = geometry.tile, geometry.margin
    padded = np.pad(y, m, mode="edge")
    ph, pw = max(padded.shape[0], t), max(padded.shape[1], t)
    padded = np.pad(padded, ((0, ph - padded.shape[0]), (0, pw - padded.shape[1])), mode="edge")
    stride = t - 2 * m - geometry.blend
    return [np.ascontiguousarray(padded[r:r + t, c:c + t])[None, None]
            for r in tile_starts(ph, t, stride) for c in tile_starts(pw, t, stride)]


def time_raw(rt, tiles: list[np.ndarray]) -> float:
    """Wall time of running every tile once through a bare onnxruntime session."""
    t0 = time.perf_counter()
    for tile in tiles:
        rt.run({"input": tile})
    return time.perf_counter() - t0


def time_tiler(upscaler: Upscaler, y: np.ndarray) -> float:
    """Wall time of the service's tiler (pad, cut, run, blend, normalise) on the same plane, in process."""
    t0 = time.perf_counter()
    upscaler.upscale_luma(y)
    return time.perf_counter() - t0


class _Replay:
    """A runtime answering every tile with one recorded output in (almost) zero time: what the tiler then
    takes is its own cost, free of the CPU contention that blurs model timings on a shared machine."""

    def __init__(self, real, output: np.ndarray):
        self.path, self.backend = real.path, real.backend
        self.input_names, self.output_names = real.input_names, real.output_names
        self._output = output

    def run(self, feeds):
        return [self._output.copy()]  # a fresh array per call, as onnxruntime allocates one


def time_tiler_alone(rt, y: np.ndarray, geometry: TileGeometry) -> float:
    tile = np.zeros((1, 1, geometry.tile, geometry.tile), np.float32)
    replay = Upscaler(_Replay(rt, rt.run({"input": tile})[0]), geometry)
    t0 = time.perf_counter()
    replay.upscale_luma(y)
    return time.perf_counter() - t0


class Server:
    """``image-engine serve`` on an ephemeral port, with extra environment variables."""

    def __init__(self, env: dict):
        self._tmp = tempfile.TemporaryDirectory()
        port_file = Path(self._tmp.name) / "port"
        self.proc = subprocess.Popen([sys.executable, "-m", "image_engine", "serve", "--port", "0",
                                      "--port-file", str(port_file)], cwd=str(REPO),
                                     env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("image-engine serve did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def upscale(self, data: bytes, out_format: str) -> requests.Response:
        r = requests.post(f"{self.url}/superres?out_format={out_format}", files={"file": ("in.png", data)},
                          timeout=600)
        r.raise_for_status()
        return r

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._tmp.cleanup()


def time_requests(server: Server, data: bytes, out_format: str, clients: int = 1,
                  per_client: int = 1) -> float:
    """Wall time per image of ``clients`` senders each posting ``per_client`` images back to back."""
    def send():
        for _ in range(per_client):
            server.upscale(data, out_format)

    threads = [threading.Thread(target=send) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) / (clients * per_client)


def measure(rounds: int, threads: int, data: bytes, y: np.ndarray) -> tuple[dict, int, int]:
    """Interleaved rounds (the machine may be shared): every path once per round, medians over rounds."""
    geometry, flat = TileGeometry(tile=224), TileGeometry(tile=224, margin=0, blend=0)
    tiles, flat_tiles = service_tiles(y, geometry), service_tiles(y, flat)
    rt = load_runtime(DEFAULT_SR_MODEL, "onnxruntime", threads=threads or None)
    tiler = Upscaler(rt, geometry)
    env = {"SR_NUM_WORKERS": "1", "SR_THREADS": str(threads), "SR_QUEUE_MAX": "8"}
    main = Server(env)
    plain = Server({**env, "SR_TILE_MARGIN": "0", "SR_TILE_BLEND": "0"})
    paths = {
        "raw": lambda: time_raw(rt, tiles),
        "tiler": lambda: time_tiler(tiler, y),
        "tiler_alone": lambda: time_tiler_alone(rt, y, geometry),
        "png": lambda: time_requests(main, data, "png"),
        "jpeg": lambda: time_requests(main, data, "jpeg"),
        "png2": lambda: time_requests(main, data, "png", clients=2, per_client=2),
        "jpeg2": lambda: time_requests(main, data, "jpeg", clients=2, per_client=2),
        "raw_flat": lambda: time_raw(rt, flat_tiles),
        "png_flat": lambda: time_requests(plain, data, "png"),
    }
    try:
        for fn in paths.values():  # warm-up
            fn()
        samples: dict = {k: [] for k in paths}
        for _ in range(rounds):
            for key, fn in paths.items():
                samples[key].append(fn())
    finally:
        main.stop()
        plain.stop()
        rt.close()
    return samples, len(tiles), len(flat_tiles)


def report(size: str = "1024x768", rounds: int = 5, threads: int = 1) -> str:
    """Run the benchmark and return its Markdown report."""
    width, height = (int(v) for v in size.split("x"))
    data = png_bytes(test_image(height, width))
    y = rgb_to_ycbcr(np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0)[..., 0]
    samples, n, n_flat = measure(rounds, threads, data, y)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = {}
    for key, values in samples.items():
        reference = samples["raw_flat" if key.endswith("flat") else "raw"]
        ratio[key] = statistics.median(r / s for r, s in zip(reference, values, strict=True))
    mp = width * height / 1e6
    out = [f"SR x3 of a {width}x{height} image ({mp:.2f} MP in, {9 * mp:.1f} MP out), tiles of 224 px, "
           f"onnxruntime threads {threads or 'default'}, median of {rounds} interleaved rounds", "",
           "| path | tiles | s / image | tiles/s | input MP/s | vs raw, same round |",
           "|---|---:|---:|---:|---:|---:|"]
    names = [("raw", "raw onnxruntime on the service's tiles", n),
             ("tiler", "tiler in process (cut, run, blend), no HTTP", n),
             ("png", "HTTP POST /superres -> png, 1 client", n),
             ("jpeg", "HTTP POST /superres -> jpeg, 1 client", n),
             ("png2", "HTTP -> png, 2 concurrent clients (throughput)", n),
             ("jpeg2", "HTTP -> jpeg, 2 concurrent clients (throughput)", n),
             ("raw_flat", "raw onnxruntime, cut without overlap", n_flat),
             ("png_flat", "HTTP -> png, no overlap (margin 0, blend 0)", n_flat)]
    for key, label, tiles in names:
        out.append(f"| {label} | {tiles} | {med[key]:.3f} | {tiles / med[key]:.1f} | {mp / med[key]:.2f} | "
                   f"{ratio[key]:.2f} |")
        if key == "tiler":
            alone = med["tiler_alone"]
            out.append(f"| tiler's own work alone (model replayed in zero time) | {n} | {alone:.3f} | – | – | "
                       f"{med['raw'] / (med['raw'] + alone):.2f} (raw / (raw + this)) |")
    out += ["", f"cost of overlap here: {n} tiles instead of {n_flat} ({n / n_flat:.2f}x); service time with "
            f"overlap {med['png'] / med['png_flat']:.2f}x of the seam-showing cut",
            f"machine load average during the run: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", ""]
    return "\n".join(out + overlap_table())


def overlap_table() -> list[str]:
    """Model runs per image with and without the overlap, for common sizes (what the NPU pays)."""
    overlap, flat = TileGeometry(tile=224), TileGeometry(tile=224, margin=0, blend=0)
    lines = ["| input size | tiles, no overlap | tiles, margin 6 + blend 6 | extra model work |",
             "|---|---:|---:|---:|"]
    for w, h in ((224, 224), (512, 512), (640, 480), (896, 672), (1024, 768), (1280, 720), (1920, 1080),
                 (4000, 3000)):
        a, b = flat.tile_count(h, w), overlap.tile_count(h, w)
        lines.append(f"| {w}x{h} | {a} | {b} | {100 * (b / a - 1):+.0f}% |")
    return lines


def run() -> str:
    """Entry point of ``python -m benchmarks``."""
    return report()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1024x768", help="test image WxH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads for raw and the worker (1: one core per worker, like one "
                             "NPU core; 0: onnxruntime's default)")
    args = parser.parse_args(argv)
    print(report(args.size, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
