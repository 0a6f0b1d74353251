"""``image-engine merge-lora``: a new LCM model directory with LoRA files merged into its ONNX weights.

The source directory is copied (its ``.rknn`` files are left out: they would be stale — convert the new
directory), ``unet/model.onnx`` and ``text_encoder/model.onnx`` are rewritten with the merged weights, and
``lora_merge.json`` records what was merged so that a mode naming the LoRAs can check it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .lora import COMPONENTS, apply_delta, layer_delta, parse_lora, resolve_module, weight_targets
from .safetensors_io import read_safetensors

log = logging.getLogger(__name__)

REPORT_FILE = "lora_merge.json"


class LoraMergeError(ValueError):
    """The merge cannot be done (missing files, a LoRA that matches nothing); the message says why."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the scale it is merged with."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``FILE`` or ``FILE:SCALE``."""
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(Path(head), float(tail))
            except ValueError:
                pass
        return cls(Path(text))


@dataclass
class LoraReport:
    file: str
    sha256: str
    scale: float
    matched: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def merge_loras(source: Path, out: Path, loras: list[LoraSpec], strict: bool = False) -> list[LoraReport]:
    """Write ``out`` = ``source`` with every LoRA merged; returns one report per LoRA.

    Raises LoraMergeError when a LoRA matches no layer at all, or (``strict``) when any key matches nothing.
    """
    import onnx

    source, out = Path(source), Path(out)
    if not (source / "unet" / "model.onnx").is_file():
        raise LoraMergeError(f"{source} has no unet/model.onnx: merge needs the ONNX model directory")
    if out.exists():
        raise LoraMergeError(f"{out} exists already: choose a new directory for the merged model")
    models = {c: onnx.load(str(source / c / "model.onnx")) for c in COMPONENTS
              if (source / c / "model.onnx").is_file()}
    reports = [_merge_one(spec, models) for spec in loras]
    for report in reports:
        if not report.matched:
            raise LoraMergeError(f"{report.file} matched no layer of {source.name} "
                                 f"({len(report.unmatched)} keys unmatched, e.g. {report.unmatched[0]['key']!r}: "
                                 f"{report.unmatched[0]['reason']}); is it for another model family?")
        if strict and report.unmatched:
            raise LoraMergeError(f"{report.file}: {len(report.unmatched)} keys matched nothing (--strict)")
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.rknn", REPORT_FILE))
    for component, model in models.items():
        onnx.save(model, str(out / component / "model.onnx"))
    previous = _read_report(source)
    (out / REPORT_FILE).write_text(json.dumps({"base": str(source), "loras": previous + [
        {"file": r.file, "sha256": r.sha256, "scale": r.scale, "layers": len(r.matched)} for r in reports],
        "reports": [asdict(r) for r in reports]}, indent=1))
    return reports


def _merge_one(spec: LoraSpec, models: dict) -> LoraReport:
    from onnx import numpy_helper

    if not spec.path.is_file():
        raise LoraMergeError(f"LoRA file {spec.path} does not exist")
    tensors, _meta = read_safetensors(spec.path)
    layers, unknown = parse_lora(tensors)
    report = LoraReport(str(spec.path), file_sha256(spec.path), spec.scale,
                        unmatched=[{"key": k, "reason": r} for k, r in unknown])
    for layer in layers:
        model = models.get(layer.component)
        if model is None:
            report.unmatched += [{"key": k, "reason": f"this model has no {layer.component}"} for k in layer.keys]
            continue
        targets = weight_targets(model)
        module, reason = resolve_module(layer, targets)
        if module is None:
            report.unmatched += [{"key": k, "reason": reason} for k in layer.keys]
            continue
        target = targets[module]
        init = next(i for i in model.graph.initializer if i.name == target.initializer)
        weight = numpy_helper.to_array(init)
        delta = layer_delta(layer, spec.scale)
        try:
            merged = apply_delta(weight, target, delta)
        except ValueError as exc:
            report.unmatched += [{"key": k, "reason": str(exc)} for k in layer.keys]
            continue
        init.CopyFrom(numpy_helper.from_array(merged, init.name))
        report.matched.append({"component": layer.component, "module": module, "initializer": target.initializer,
                               "shape": list(weight.shape), "rank": int(layer.down.shape[0]),
                               "alpha": layer.alpha, "max_abs_delta": float(np.abs(delta).max())})
        log.info("merged %s into %s/%s (rank %d)", spec.path.name, layer.component, module, layer.down.shape[0])
    return report


def _read_report(model_dir: Path) -> list[dict]:
    path = Path(model_dir) / REPORT_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("loras", []))
    except (OSError, ValueError, AttributeError):
        return []


def merged_loras(model_dir: Path) -> list[dict]:
    """The LoRAs recorded in a merged model directory (empty for a plain one)."""
    return _read_report(model_dir)


def format_report(reports: list[LoraReport]) -> str:
    """A human-readable summary: matched layers, then every key that matched nothing with its reason."""
    lines = []
    for r in reports:
        lines.append(f"{r.file} (scale {r.scale:g}): {len(r.matched)} layer(s) merged, "
                     f"{len(r.unmatched)} key(s) matched nothing")
        for m in r.matched:
            lines.append(f"  merged   {m['component']}/{m['module']}  {tuple(m['shape'])}  rank {m['rank']}  "
                         f"alpha {m['alpha'] if m['alpha'] is not None else 'rank'}  max|dW| {m['max_abs_delta']:.4g}")
        for u in r.unmatched:
            lines.append(f"  UNMATCHED {u['key']}: {u['reason']}")
    return "\n".join(lines)
