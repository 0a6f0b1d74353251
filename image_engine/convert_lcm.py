"""``image-engine convert`` for an LCM model directory: one fixed-size ``.rknn`` per part, and a report.

The parts' inputs are fixed from the size (the mode's ``default_size``): ``input_ids`` (1, 77),
``sample``/``latent_sample`` (1, 4, H/8, W/8), ``timestep`` (1,), ``encoder_hidden_states`` (1, 77, D),
``timestep_cond`` (1, 256). Calibration and held-out inputs are the real inputs each part receives: the
onnxruntime pipeline is run on prompts and every call's feeds are recorded. Quality: max/mean abs
difference to onnxruntime per part (on held-out feeds), then for whole generations through ``LCMPipeline``
on the simulated builds.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
from .pipeline import COMPONENTS, VAE_SCALE, GenerateParams, LCMPipeline, ModelFiles
from .rknn_sim import prebuilt_lite_class
from .runtimes import CORE_AUTO, GatedRuntime, ModelRuntime, RknnRuntime, load_runtime, onnx_io_names

CALIBRATION_PROMPTS = ("a photograph of a cat", "a futuristic city at sunset", "a portrait in the forest",
                       "a mountain at sunrise")
HOLDOUT_PROMPTS = ("a cinematic dog in the city", "the sunset of a mountain forest")
CALIBRATION_SEED, HOLDOUT_SEED = 0, 1000
_SEQ_LEN, _COND_DIM = 77, 256


class FeedRecorder(GatedRuntime):
    """A runtime that keeps a copy of every call's feeds (to calibrate and to measure a part on them)."""

    def __init__(self, inner: ModelRuntime):
        super().__init__(inner, contextlib.nullcontext)
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict) -> list:
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return super().run(feeds)


@dataclass
class PartScore:
    """One build of one part on the held-out feeds, against onnxruntime."""

    max_abs: float
    mean_abs: float
    rel_error: float  # mean abs error / mean abs onnxruntime output


@dataclass
class LCMReport:
    """What ``convert`` measured and chose for an LCM model directory."""

    model: str
    target: str
    size: tuple[int, int]
    out_dir: Path
    parts: dict[str, dict] = field(default_factory=dict)        # part → chosen, reason, cpu_ops, seconds
    scores: dict[str, dict[str, PartScore]] = field(default_factory=dict)
    generation: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": "lcm", "model": self.model, "target": self.target, "size": f"{self.size[0]}x{self.size[1]}",
                "out_dir": str(self.out_dir), "parts": self.parts,
                "scores": {p: {d: vars(s) for d, s in per.items()} for p, per in self.scores.items()},
                "generation": self.generation}

    def markdown(self) -> str:
        w, h = self.size
        lines = [f"{self.model} → {self.out_dir} ({self.target}, {w}x{h})",
                 "| part | build | max abs vs ORT | mean abs vs ORT | rel. error | kept | on the CPU | build s |",
                 "|---|---|---:|---:|---:|---|---|---:|"]
        for part, per in self.scores.items():
            info = self.parts[part]
            for dtype, s in per.items():
                lines.append(f"| {part} | {dtype} | {s.max_abs:.4g} | {s.mean_abs:.4g} | {s.rel_error:.4f} | "
                             f"{'yes' if dtype == info['dtype'] else ''} | {', '.join(info['cpu_ops'][dtype]) or '-'}"
                             f" | {info['build_seconds'][dtype]:.2f} |")
        lines += [f"- {part}: {info['reason']}" for part, info in self.parts.items()]
        g = self.generation
        lines.append(f"whole {g['steps']}-step generation on the kept builds, {len(g['prompts'])} held-out "
                     f"prompt(s): image max abs {g['max_abs']:.4f}, mean abs {g['mean_abs']:.5f} (0-1 scale) "
                     "vs onnxruntime")
        return "\n".join(lines)


def part_io(files: ModelFiles, part: str, size: tuple[int, int]) -> PartIO:
    """The fixed input shapes of ``part`` for images of ``size`` (width, height)."""
    onnx = files.paths[part]
    inputs, outputs = onnx_io_names(onnx)
    w, h = size
    latent = [1, int(files.unet_config.get("in_channels", 4)), h // VAE_SCALE, w // VAE_SCALE]
    hidden = _static_dim(onnx, "encoder_hidden_states", 2) or int(files.unet_config.get("cross_attention_dim", 768))
    cond = _static_dim(onnx, "timestep_cond", 1) or int(files.unet_config.get("time_cond_proj_dim") or _COND_DIM)
    known = {"input_ids": [1, _SEQ_LEN], "sample": latent, "latent_sample": latent, "timestep": [1],
             "encoder_hidden_states": [1, _SEQ_LEN, hidden], "timestep_cond": [1, cond]}
    unknown = [name for name in inputs if name not in known]
    if unknown:
        raise BadInput(f"{onnx} has inputs {unknown} that an LCM {part} does not take")
    return PartIO(inputs, [known[name] for name in inputs], outputs)


def _static_dim(onnx: Path, name: str, axis: int) -> int:
    import onnx as onnx_lib

    for value in onnx_lib.load(str(onnx), load_external_data=False).graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            return int(dims[axis].dim_value) if len(dims) > axis else 0
    return 0


def read_prompts(directory: Path | None, default: tuple[str, ...]) -> tuple[list[str], str]:
    """Prompts from ``DIR/prompts.txt`` (one a line), else the built-in ones."""
    if directory is None:
        return list(default), "built-in prompts"
    path = directory / "prompts.txt"
    if not path.is_file():
        raise BadInput(f"{path} is missing: an LCM calibration or held-out set is a prompts.txt, one prompt a line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise BadInput(f"{path} has no prompts")
    return prompts, str(path)


def record_feeds(files: ModelFiles, size: tuple[int, int], prompts: list[str], seed: int,
                 steps: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each part's feeds over onnxruntime generations of ``prompts`` (seeds ``seed``, ``seed + 1``, ...)."""
    runtimes = {p: FeedRecorder(load_runtime(files.paths[p], "onnxruntime")) for p in COMPONENTS}
    pipeline = LCMPipeline(files, runtimes, _tokenizer(files))
    try:
        for i, prompt in enumerate(prompts):
            pipeline.generate(_params(prompt, size, steps, seed + i))
    finally:
        pipeline.close()
    return {p: rt.feeds for p, rt in runtimes.items()}


def _tokenizer(files: ModelFiles):
    from .clip_tokenizer import CLIPTokenizer

    return CLIPTokenizer.from_dir(files.tokenizer_dir)


def _params(prompt: str, size: tuple[int, int], steps: int, seed: int) -> GenerateParams:
    return GenerateParams(prompt, size[0], size[1], steps, 1.0, seed)


def score_part(reference: ModelRuntime, build: ModelRuntime, feeds: list[dict]) -> PartScore:
    diffs, magnitudes = [], []
    for feed in feeds:
        want = reference.run(feed)[0].astype(np.float32)
        got = np.asarray(build.run(feed)[0], dtype=np.float32).reshape(want.shape)
        diffs.append(np.abs(got - want).ravel())
        magnitudes.append(np.abs(want).ravel())
    d, m = np.concatenate(diffs), np.concatenate(magnitudes)
    return PartScore(float(d.max()), float(d.mean()), float(d.mean() / max(float(m.mean()), 1e-12)))


def choose_part_dtype(dtype: str, scores: dict[str, PartScore], threshold: float) -> tuple[str, str]:
    if dtype != "auto":
        return dtype, f"{dtype} as asked"
    rel = scores["int8"].rel_error
    if rel <= threshold:
        return "int8", f"int8: relative error {rel:.4f} is within the {threshold:g} threshold"
    return "fp16", f"fp16: int8's relative error {rel:.4f} is over the {threshold:g} threshold"


def convert_lcm(root: Path, opts: ConvertOptions, out_dir: Path) -> LCMReport:
    """Convert the three parts of the LCM model at ``root`` into ``out_dir`` (a complete model directory)."""
    files = ModelFiles(root, "onnxruntime")
    size = opts.size or _config_size(files)
    if size[0] % VAE_SCALE or size[1] % VAE_SCALE:
        raise BadInput(f"size {size[0]}x{size[1]}: width and height must be multiples of {VAE_SCALE}")
    _copy_model_dir(root, out_dir, size)
    out_files = ModelFiles(out_dir, "onnxruntime")
    report = LCMReport(root.name, opts.target, size, out_dir)
    calib_prompts, _ = read_prompts(opts.calibration, CALIBRATION_PROMPTS)
    held_prompts, _ = read_prompts(opts.holdout, HOLDOUT_PROMPTS)
    progress = Progress(len(COMPONENTS), opts.progress)
    need_int8 = "int8" in candidates_for(opts.dtype)
    calib = record_feeds(out_files, size, calib_prompts, CALIBRATION_SEED, opts.steps) if need_int8 else {}
    held = record_feeds(out_files, size, held_prompts, HOLDOUT_SEED, opts.steps)
    kept: dict[str, PartBuild] = {}
    dropped: list[dict[str, PartBuild]] = []
    try:
        for part in COMPONENTS:
            progress.part(part)
            candidates = _convert_part(out_files, part, size, opts, calib.get(part, []), held[part], progress,
                                       report)
            chosen = report.parts[part]["dtype"]
            kept[part] = candidates.pop(chosen)
            dropped.append(candidates)
        report.generation = _whole_generation(out_files, kept, size, held_prompts, opts.steps)
        opts.progress(f"whole generation vs onnxruntime: max abs {report.generation['max_abs']:.4f}")
    finally:
        for candidates in dropped:
            release_all(candidates)
        release_all(kept)
    return report


def _convert_part(files: ModelFiles, part: str, size: tuple[int, int], opts: ConvertOptions,
                  calib_feeds: list[dict], held_feeds: list[dict], progress: Progress,
                  report: LCMReport) -> dict[str, PartBuild]:
    onnx = files.paths[part]
    io = part_io(files, part, size)
    dataset = None
    if calib_feeds:
        samples = [[feed[name] for name in io.inputs] for feed in calib_feeds]
        dataset = write_dataset(onnx.parent / "model.calibration", samples)
        progress(f"calibration set: {len(samples)} recorded call(s)")
    candidates: dict[str, PartBuild] = {}
    try:
        for dtype in candidates_for(opts.dtype):
            candidates[dtype] = build_candidate(onnx, io, dtype, opts, dataset, progress)
        scores = _score_candidates(onnx, candidates, held_feeds)
        chosen, reason = choose_part_dtype(opts.dtype, scores, opts.auto_max_rel_error)
        quality = {d: vars(s) for d, s in scores.items()}
        export_part(candidates[chosen], onnx.with_suffix(".rknn"), onnx, io, part, opts, dataset,
                    len(calib_feeds), quality, reason)
        progress(f"wrote {onnx.with_suffix('.rknn')} ({reason})")
    except BaseException:
        release_all(candidates)
        raise
    report.scores[part] = scores
    report.parts[part] = {"dtype": chosen, "reason": reason,
                          "cpu_ops": {d: c.built.cpu_ops for d, c in candidates.items()},
                          "build_seconds": {d: round(c.seconds, 2) for d, c in candidates.items()}}
    return candidates


def _score_candidates(onnx: Path, candidates: dict[str, PartBuild], feeds: list[dict]) -> dict[str, PartScore]:
    reference = load_runtime(onnx, "onnxruntime")
    try:
        scores = {}
        for dtype, candidate in candidates.items():
            with _sim_runtime(onnx, candidate) as sim:
                scores[dtype] = score_part(reference, sim, feeds)
        return scores
    finally:
        reference.close()


def _sim_runtime(onnx: Path, candidate: PartBuild) -> RknnRuntime:
    return RknnRuntime(onnx.with_suffix(".rknn"), prebuilt_lite_class(candidate.built), CORE_AUTO)


def _whole_generation(files: ModelFiles, kept: dict[str, PartBuild], size: tuple[int, int],
                      prompts: list[str], steps: int) -> dict:
    sims = {p: _sim_runtime(files.paths[p], kept[p]) for p in COMPONENTS}
    simulated = LCMPipeline(files, sims, _tokenizer(files), fixed_size=size)
    reference = LCMPipeline(files, {p: load_runtime(files.paths[p], "onnxruntime") for p in COMPONENTS},
                            _tokenizer(files))
    diffs = []
    try:
        for i, prompt in enumerate(prompts):
            params = _params(prompt, size, steps, HOLDOUT_SEED + i)
            diffs.append(np.abs(simulated.generate(params).image - reference.generate(params).image))
    finally:
        simulated.close()
        reference.close()
    return {"steps": steps, "prompts": prompts, "max_abs": float(max(d.max() for d in diffs)),
            "mean_abs": float(np.mean([d.mean() for d in diffs]))}


def _config_size(files: ModelFiles) -> tuple[int, int]:
    """(width, height) from ``unet/config.json``'s ``sample_size`` (latent units), else 512x512."""
    sample = files.unet_config.get("sample_size")
    if isinstance(sample, int):
        return sample * VAE_SCALE, sample * VAE_SCALE
    if isinstance(sample, list) and len(sample) == 2:
        return int(sample[1]) * VAE_SCALE, int(sample[0]) * VAE_SCALE
    return 512, 512


def _copy_model_dir(root: Path, out_dir: Path, size: tuple[int, int]) -> None:
    """A complete model directory at ``out_dir``: ONNX (linked), configs, tokenizer, scheduler; the UNet's
    ``sample_size`` set to the converted size, which is how the pipeline knows a static RKNN UNet's size."""
    if out_dir.resolve() == root.resolve():
        raise BadInput("--output must be a new directory, not the model directory itself")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if path.suffix == ".rknn" or rel.name.endswith(".rknn.json") or "model.calibration" in rel.parts:
            continue  # an earlier conversion's output
        copy_file(path, out_dir / rel)
    config_path = out_dir / "unet" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config["sample_size"] = [size[1] // VAE_SCALE, size[0] // VAE_SCALE]
    if config_path.exists():
        config_path.unlink()  # it may be a hard link to the source's file
    config_path.write_text(json.dumps(config, indent=1))
