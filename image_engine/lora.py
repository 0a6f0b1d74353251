"""LoRA weights merged into ONNX initializers, so fixed-graph runtimes (RKNN) serve fine-tuned models.

For each adapted layer ``W' = W + scale · (alpha / rank) · up @ down`` (``alpha`` defaults to the rank).
Key naming understood: kohya (``lora_unet_<path>.lora_down.weight`` / ``lora_up`` / ``alpha``, text encoder
``lora_te_`` or ``lora_te1_``), diffusers/PEFT (``unet.<path>.lora_A.weight`` / ``lora_B``, also
``lora.down``/``lora.up``) and diffusers' older attention processors (``<path>.processor.to_q_lora.down``).
Layers are found in the ONNX graph as ``<path>.weight`` initializers (Conv, Gemm, MatMul) or, as torch
exports them, a node named ``/<path with slashes>/<Op>`` whose weight is an anonymous initializer (a
bias-free Linear becomes a MatMul on the transposed weight). Every LoRA key either changes a layer or is
reported with the reason it did not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

COMPONENTS = ("unet", "text_encoder")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2"}
_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_PEFT_PARTS = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down",
               "lora.up.weight": "up", "alpha": "alpha"}
_PROCESSOR = re.compile(r"^(?P<base>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")


@dataclass
class LoraLayer:
    """One adapted layer of one component: its low-rank factors and the keys they came from."""

    component: str
    module: str  # dotted path (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``), or kohya's
    kohya: bool = False  # underscored form, resolved against the graph's paths
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    alpha: float | None = None
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where a layer's weight lives in an ONNX graph, and whether it is stored as (in, out)."""

    initializer: str
    transposed: bool


def parse_lora(tensors: dict[str, np.ndarray]) -> tuple[list[LoraLayer], list[tuple[str, str]]]:
    """Group a LoRA file's tensors into layers; returns (layers, [(key, reason)] for keys that fit none)."""
    layers: dict[tuple[str, str], LoraLayer] = {}
    unknown: list[tuple[str, str]] = []
    for key, value in tensors.items():
        parsed = _parse_key(key)
        if parsed is None:
            unknown.append((key, "not a LoRA key this merger understands (kohya, diffusers or PEFT naming)"))
            continue
        component, module, part, kohya = parsed
        layer = layers.setdefault((component, module), LoraLayer(component, module, kohya))
        layer.keys.append(key)
        if part == "alpha":
            layer.alpha = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
        else:
            setattr(layer, part, np.asarray(value, dtype=np.float32))
    complete = []
    for layer in layers.values():
        if layer.down is None or layer.up is None:
            missing = "up" if layer.up is None else "down"
            unknown += [(key, f"its layer has no {missing} matrix") for key in layer.keys]
        else:
            complete.append(layer)
    return complete, unknown


def _parse_key(key: str) -> tuple[str, str, str, bool] | None:
    for prefix, component in _KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            for suffix, part in _KOHYA_PARTS.items():
                if key.endswith("." + suffix):
                    return component, key[len(prefix):-len(suffix) - 1], part, True
            return None
    component, _, rest = key.partition(".")
    if component not in ("unet", "text_encoder", "text_encoder_2") or not rest:
        return None
    match = _PROCESSOR.match(rest)
    if match:
        proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]
        return component, f"{match['base']}.{proj}", match["part"], False
    for suffix, part in _PEFT_PARTS.items():
        if rest.endswith("." + suffix):
            return component, rest[:-len(suffix) - 1], part, False
    return None


def weight_targets(model) -> dict[str, Target]:
    """Module path → where its weight is, for every weight-bearing layer of an ONNX ``ModelProto``."""
    inits = {init.name for init in model.graph.initializer}
    targets: dict[str, Target] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = node.input[1]
        if weight.endswith(".weight"):
            module = weight[:-len(".weight")]
        elif node.name.startswith("/") and node.name.endswith("/" + node.op_type):
            module = node.name[:-len(node.op_type) - 1].strip("/").replace("/", ".")
        else:
            continue
        if node.op_type == "Conv":
            transposed = False
        elif node.op_type == "Gemm":
            transposed = not any(a.name == "transB" and a.i == 1 for a in node.attribute)
        else:
            transposed = True
        targets[module] = Target(weight, transposed)
    return targets


def layer_delta(layer: LoraLayer, scale: float) -> np.ndarray:
    """``scale · alpha/rank · up @ down`` in the (out, in[, kh, kw]) layout of the original layer."""
    rank = layer.down.shape[0]
    factor = scale * ((layer.alpha if layer.alpha is not None else rank) / rank)
    up = layer.up.reshape(layer.up.shape[0], rank)
    down = layer.down.reshape(rank, -1)
    return (factor * (up @ down)).reshape((layer.up.shape[0], *layer.down.shape[1:]))


def resolve_module(layer: LoraLayer, targets: dict[str, Target]) -> tuple[str | None, str]:
    """(module path in the graph, or None with the reason)."""
    if not layer.kohya:
        return (layer.module, "") if layer.module in targets else (None, "no such layer in the graph")
    candidates = [path for path in targets if path.replace(".", "_") == layer.module]
    if len(candidates) == 1:
        return candidates[0], ""
    if candidates:
        return None, f"ambiguous: matches {sorted(candidates)}"
    return None, "no such layer in the graph"


def apply_delta(weight: np.ndarray, target: Target, delta: np.ndarray) -> np.ndarray:
    """``weight`` plus ``delta`` (out, in, …) in the weight's own layout and dtype; ValueError on shapes."""
    oriented = delta.T if target.transposed else delta
    if oriented.shape != weight.shape:
        if oriented.size == weight.size and weight.ndim == 4:  # a 1x1 conv adapted by a linear LoRA
            oriented = oriented.reshape(weight.shape)
        else:
            raise ValueError(f"LoRA shape {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    return (weight.astype(np.float32) + oriented).astype(weight.dtype)
