"""Modelfile and request values -> RKLLMParam / RKLLMSamplingParam.

Sampling values in RKLLMParam are fixed when the handle is created, so they come from the Modelfile
(TEMPERATURE, TOP_K, ...). Only RKLLM 1.3 takes per-run overrides (RKLLMInferParam.sampling_params and
max_new_tokens); on older ABIs a request's sampling values cannot reach the library and the handle
enforces the request's max_new_tokens itself by aborting at the limit. The init-time max_new_tokens is
therefore the context size: the per-request limit is always the smaller one.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from ..runtimes.base import GenerationParams, ModelLoadError, ModelSpec
from .abi_common import Abi

log = logging.getLogger(__name__)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _cpu_mask(text: str) -> int:
    """``0xF0``, ``240`` or a CPU list such as ``4,5,6,7`` / ``4-7``."""
    value = text.strip()
    if value.lower().startswith("0x"):
        return int(value, 16)
    if "," in value or "-" in value:
        mask = 0
        for part in value.split(","):
            lo, _, hi = part.strip().partition("-")
            for cpu in range(int(lo), int(hi or lo) + 1):
                if not 0 <= cpu < 32:
                    raise ValueError(f"CPU {cpu} out of range 0-31")
                mask |= 1 << cpu
        return mask
    return int(value)


@dataclass(frozen=True)
class LoadSettings:
    """Init-time values for one handle; None leaves the library's default."""

    max_context_len: int
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    skip_special_token: bool | None = None
    n_keep: int | None = None
    base_domain_id: int | None = None
    enabled_cpus_mask: int | None = None
    embed_flash: int | None = None


# Modelfile key -> (LoadSettings field, parser)
MODELFILE_KEYS: Mapping[str, tuple] = {
    "TOP_K": ("top_k", int),
    "TOP_P": ("top_p", float),
    "TEMPERATURE": ("temperature", float),
    "REPEAT_PENALTY": ("repeat_penalty", float),
    "FREQUENCY_PENALTY": ("frequency_penalty", float),
    "PRESENCE_PENALTY": ("presence_penalty", float),
    "MIROSTAT": ("mirostat", int),
    "MIROSTAT_TAU": ("mirostat_tau", float),
    "MIROSTAT_ETA": ("mirostat_eta", float),
    "SKIP_SPECIAL_TOKEN": ("skip_special_token", _bool),
    "N_KEEP": ("n_keep", int),
    "BASE_DOMAIN_ID": ("base_domain_id", int),
    "ENABLED_CPUS_MASK": ("enabled_cpus_mask", _cpu_mask),
    "EMBED_FLASH": ("embed_flash", lambda s: int(_bool(s))),
}

# Fields that live in RKLLMExtendParam, and those some ABIs lack.
_EXTEND = ("base_domain_id", "enabled_cpus_mask", "embed_flash")


def settings_from_spec(spec: ModelSpec) -> LoadSettings:
    """Parse the Modelfile options of ``spec``; a malformed value raises ModelLoadError naming the key."""
    values = {}
    for key, (name, parse) in MODELFILE_KEYS.items():
        raw = spec.options.get(key)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            values[name] = parse(str(raw))
        except ValueError as exc:
            raise ModelLoadError(f"{spec.name}: Modelfile {key}={raw!r} is not valid: {exc}") from None
    if spec.num_ctx <= 0:
        raise ModelLoadError(f"{spec.name}: NUM_CTX must be positive, got {spec.num_ctx}")
    return LoadSettings(max_context_len=spec.num_ctx, **values)


def fill_param(abi: Abi, param: ctypes.Structure, settings: LoadSettings, model_path: bytes) -> list[str]:
    """Write ``settings`` into ``param`` (already holding the library defaults). Returns the settings
    this ABI has no field for (e.g. embed_flash on 1.1), which are logged and otherwise ignored."""
    names = {name for name, *_ in param._fields_}
    extend_names = {name for name, *_ in param.extend_param._fields_}
    ignored = []
    param.model_path = model_path
    param.max_context_len = settings.max_context_len
    param.max_new_tokens = settings.max_context_len
    param.is_async = False
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "max_context_len" or value is None:
            continue
        if f.name in _EXTEND:
            if f.name not in extend_names:
                ignored.append(f.name)
                continue
            setattr(param.extend_param, f.name, value)
            if f.name == "enabled_cpus_mask":
                param.extend_param.enabled_cpus_num = value.bit_count()
        elif f.name in names:
            setattr(param, f.name, value)
        else:
            ignored.append(f.name)
    for name in ignored:
        log.warning("RKLLM %s has no %s parameter: ignored", abi.name, name)
    return ignored


def sampling_param(abi: Abi, params: GenerationParams, init: ctypes.Structure) -> ctypes.Structure | None:
    """The per-run RKLLMSamplingParam for ``params`` (RKLLM 1.3; mirostat settings stay those of ``init``),
    or None where the ABI has none."""
    if not abi.has_run_overrides:
        return None
    from .abi_1_3 import RKLLMSamplingParam

    return RKLLMSamplingParam(top_k=params.top_k, top_p=params.top_p, temperature=params.temperature,
                              repeat_penalty=params.repeat_penalty, frequency_penalty=params.frequency_penalty,
                              presence_penalty=params.presence_penalty, mirostat=init.mirostat,
                              mirostat_tau=init.mirostat_tau, mirostat_eta=init.mirostat_eta)


def describe_param(param: ctypes.Structure) -> dict:
    """RKLLMParam as a plain dict (for logs and tests)."""
    def plain(struct: ctypes.Structure, convert: Callable) -> dict:
        return {name: convert(getattr(struct, name)) for name, *_ in struct._fields_
                if name not in ("reserved", "extend_param")}

    out = plain(param, lambda v: v.decode(errors="replace") if isinstance(v, bytes) else v)
    out.update(plain(param.extend_param, lambda v: v))
    return out
