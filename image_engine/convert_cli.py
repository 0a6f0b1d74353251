"""``image-engine convert``: ONNX → ``.rknn`` for an SR model file or an LCM model directory, on a PC."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .convert_common import DTYPE_CHOICES, ConvertOptions
from .errors import BadInput
from .modes import parse_size
from .rknn_sidecar import TARGETS


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="an SR model (.onnx) or an LCM model directory (text_encoder/, "
                   "unet/, vae_decoder/ with model.onnx each)")
    p.add_argument("--target", choices=TARGETS, default="rk3588", help="the board's chip (default rk3588)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp16",
                   help="fp16, int8, or auto: build both and keep int8 only where it costs less than the "
                   "threshold (default fp16)")
    p.add_argument("--calibration", type=Path, default=None, help="int8 calibration set: images (SR) or a "
                   "prompts.txt (LCM); default: built-in synthetic scenes / prompts")
    p.add_argument("--holdout", type=Path, default=None, help="held-out set for the quality report, same "
                   "kinds as --calibration; default: built-in ones, distinct from the calibration set")
    p.add_argument("--tile", type=int, default=224, help="SR: tile side the model is fixed to (default 224; "
                   "serve with SR_INPUT_SIZE=TILE SR_OUTPUT_SIZE=3*TILE)")
    p.add_argument("--size", default=None, help="LCM: image size WIDTHxHEIGHT the parts are fixed to (default: "
                   "unet/config.json sample_size, else 512x512); give the mode's default_size")
    p.add_argument("--output", type=Path, default=None,
                   help="output directory (default ./NAME-TARGET-DTYPE); copy it to the board")
    p.add_argument("--auto-max-db-loss", type=float, default=ConvertOptions.auto_max_db_loss,
                   help="auto, SR: keep int8 if no held-out image loses more PSNR than this (default %(default)s dB)")
    p.add_argument("--auto-max-rel-error", type=float, default=ConvertOptions.auto_max_rel_error,
                   help="auto, LCM: keep int8 for a part if mean abs error / mean abs output is at most this "
                   "(default %(default)s)")
    p.add_argument("--steps", type=int, default=4, help="LCM: steps of the measured generations (default 4)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="LCM: merge this LoRA (.safetensors) into the UNet/text encoder before converting; repeat "
                   "for several (see image-engine merge-lora)")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    if args.tile < 16:
        raise BadInput(f"--tile {args.tile} is too small (at least 16)")
    if not 1 <= args.steps <= 8:
        raise BadInput(f"--steps must be 1-8, got {args.steps}")
    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        raise BadInput(f"--size: {exc}") from None
    for flag, path in (("--calibration", args.calibration), ("--holdout", args.holdout)):
        if path is not None and not path.is_dir():
            raise BadInput(f"{flag} {path} is not a directory")
    return ConvertOptions(target=args.target, dtype=args.dtype, output=args.output, calibration=args.calibration,
                          holdout=args.holdout, tile=args.tile, size=size, auto_max_db_loss=args.auto_max_db_loss,
                          auto_max_rel_error=args.auto_max_rel_error, steps=args.steps,
                          progress=lambda line: print(line, flush=True))


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert, print the quality report, and write it as JSON and Markdown beside the models."""
    from .rknn_toolkit import rknn_class

    opts = options_from_args(args)
    source = args.source
    if args.lora and not source.is_dir():
        raise BadInput("--lora applies to an LCM model directory (its UNet and text encoder), not to an SR model")
    if not args.verbose:  # the per-part progress lines say what happens; model loads would drown them
        logging.getLogger("image_engine.runtimes").setLevel(logging.WARNING)
    rknn_class()  # fail with the install command before any work
    name = source.stem if source.is_file() else source.name
    out_dir = opts.output or Path.cwd() / f"{name}-{opts.target}-{opts.dtype}"
    if source.is_file() and source.suffix.lower() == ".onnx":
        from .convert_sr import convert_sr

        report = convert_sr(source, opts, out_dir)
    elif source.is_dir() and (source / "unet").is_dir():
        report = _convert_lcm_with_loras(source, opts, out_dir, args.lora)
    else:
        raise BadInput(f"{source} is neither an .onnx file nor an LCM model directory (with unet/)")
    text = report.markdown()
    (out_dir / "conversion-report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out_dir / "conversion-report.md").write_text(text + "\n")
    print(text)
    print(f"report: {out_dir / 'conversion-report.md'}")
    return 0


def _convert_lcm_with_loras(source: Path, opts: ConvertOptions, out_dir: Path, loras: list[str]):
    """Convert an LCM directory, first merging ``loras`` into a scratch copy of its ONNX files; the merge
    record (``lora_merge.json``) goes beside the converted parts so that a mode naming the LoRAs accepts it."""
    import shutil
    import tempfile

    from .convert_lcm import convert_lcm
    from .lora_merge import REPORT_FILE, LoraMergeError, LoraSpec, format_report, merge_loras
    from .safetensors_io import SafetensorsError

    if not loras:
        return convert_lcm(source, opts, out_dir)
    with tempfile.TemporaryDirectory(prefix="lora-merge-") as scratch:
        merged = Path(scratch) / source.name
        try:
            reports = merge_loras(source, merged, [LoraSpec.parse(text) for text in loras])
        except (LoraMergeError, SafetensorsError) as exc:
            raise BadInput(str(exc)) from None
        print(format_report(reports), flush=True)
        report = convert_lcm(merged, opts, out_dir)
        if not (out_dir / REPORT_FILE).exists():  # convert_lcm copies the directory's other files
            shutil.copy2(merged / REPORT_FILE, out_dir / REPORT_FILE)
    return report
