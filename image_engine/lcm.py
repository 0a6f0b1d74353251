"""The Latent Consistency Model scheduler in numpy: pure math, no I/O, no random state.

Numbers follow the LCM paper and diffusers' ``LCMScheduler`` (``timestep_spacing="leading"``): a
``scaled_linear`` beta schedule, ``original_inference_steps`` skeleton timesteps ``k-1, 2k-1, ...`` with
``k = num_train_timesteps // original_inference_steps``, from which ``n`` are taken evenly by index (4 steps
of the default 1000/50 schedule give 999, 759, 499, 259). The step draws no noise itself: the caller passes
it, so one seeded generator can own every random number of a generation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

SIGMA_DATA = 0.5


@dataclass(frozen=True)
class LCMConfig:
    """The subset of a diffusers ``scheduler_config.json`` the LCM step depends on."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    set_alpha_to_one: bool = True
    prediction_type: str = "epsilon"
    timestep_scaling: float = 10.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    @classmethod
    def from_json(cls, path: str | Path) -> LCMConfig:
        """Read a ``scheduler_config.json``; keys this scheduler does not use are ignored."""
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known and v is not None})


class LCMScheduler:
    """Timesteps, boundary scalings and the consistency step of an LCM.

    Arrays are float32 like the models they feed; ``alphas_cumprod`` is accumulated in float32 as the
    reference implementation does, so values agree with it to float32 rounding.
    """

    def __init__(self, config: LCMConfig | None = None):
        self.config = config or LCMConfig()
        c = self.config
        if c.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {c.prediction_type!r}")
        self.betas = _betas(c.beta_schedule, c.beta_start, c.beta_end, c.num_train_timesteps)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas, dtype=np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if c.set_alpha_to_one else self.alphas_cumprod[0]

    @property
    def max_steps(self) -> int:
        """The largest ``num_inference_steps`` this schedule supports."""
        return self.config.original_inference_steps

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The descending int64 timesteps of an ``num_inference_steps``-step generation."""
        c = self.config
        if not 1 <= num_inference_steps <= c.original_inference_steps:
            raise ValueError(f"num_inference_steps must be between 1 and {c.original_inference_steps}, "
                             f"got {num_inference_steps}")
        k = c.num_train_timesteps // c.original_inference_steps
        skeleton = (np.arange(1, c.original_inference_steps + 1, dtype=np.int64) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(skeleton), num=num_inference_steps, endpoint=False)).astype(np.int64)
        return skeleton[picks].copy()

    def scalings(self, timestep: int) -> tuple[float, float]:
        """``(c_skip, c_out)``: the boundary condition that makes the step the identity at t = 0."""
        scaled = float(timestep) * self.config.timestep_scaling
        c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
        c_out = scaled / math.sqrt(scaled ** 2 + SIGMA_DATA ** 2)
        return c_skip, c_out

    def step(self, model_output: np.ndarray, timesteps: np.ndarray, index: int, sample: np.ndarray,
             noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One LCM step at ``timesteps[index]``: returns ``(next_sample, denoised)``.

        ``noise`` (standard normal, shaped like ``sample``) re-noises the prediction to the next timestep;
        it is required on every step but the last, where ``next_sample`` is ``denoised``.
        """
        t = int(timesteps[index])
        last = index == len(timesteps) - 1
        prev_t = t if last else int(timesteps[index + 1])
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_t = 1.0 - alpha_t
        x0 = self._predict_original(model_output, sample, alpha_t, beta_t)
        c_skip, c_out = self.scalings(t)
        denoised = (c_out * x0 + c_skip * sample).astype(np.float32)
        if last:
            return denoised, denoised
        if noise is None or noise.shape != sample.shape:
            raise ValueError("step needs standard normal noise shaped like the sample before the last step")
        nxt = np.sqrt(alpha_prev) * denoised + np.sqrt(1.0 - alpha_prev) * noise
        return nxt.astype(np.float32), denoised

    def _predict_original(self, model_output: np.ndarray, sample: np.ndarray, alpha_t: np.float32,
                          beta_t: np.float32) -> np.ndarray:
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - np.sqrt(beta_t) * model_output) / np.sqrt(alpha_t)
        elif kind == "sample":
            x0 = model_output
        else:
            x0 = np.sqrt(alpha_t) * sample - np.sqrt(beta_t) * model_output
        if self.config.clip_sample:
            lim = self.config.clip_sample_range
            x0 = np.clip(x0, -lim, lim)
        return x0


def guidance_embedding(guidance_scale: float, dim: int = 256) -> np.ndarray:
    """The LCM ``timestep_cond`` input: a sinusoidal embedding of ``w = guidance_scale - 1``, shape (1, dim).

    LCMs are distilled with guidance baked in, so the scale enters the UNet as this embedding rather than
    as a second (unconditional) UNet pass.
    """
    w = np.array([guidance_scale - 1.0], dtype=np.float32) * 1000.0
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * -(np.log(10000.0) / (half - 1))).astype(np.float32)
    angles = w[:, None] * freq[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2 == 1:
        emb = np.pad(emb, [(0, 0), (0, 1)])
    return emb.astype(np.float32)


def _betas(schedule: str, start: float, end: float, n: int) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(start, end, n, dtype=np.float32)
    if schedule == "scaled_linear":
        return (np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2).astype(np.float32)
    raise ValueError(f"unsupported beta_schedule {schedule!r} (linear or scaled_linear)")
