"""How long the pool lets a bridge take to send a request's first token before it moves the request.

A board that freezes while it prefills sends nothing, yet a healthy board may sit idle next to it. The
budget follows the bridge's own measured prefill speed (``timings.prefill_ms`` over the prompt tokens it
actually prefilled, from the final line of its earlier streams) times the prompt length, with ``SLACK``
for ordinary variation, bounded below by ``floor`` (network, first decode step, a cold cache) and above
by ``cap``. A bridge never measured yet, one that must first load the model or queue the request behind
others gets the cap: its first token waits for work no rate describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from exo_rk.client import StreamEnd

SLACK = 3.0  # a working board is not three times slower than its own recent average
SMOOTHING = 0.3  # weight of the newest measurement in the running average


@dataclass
class PrefillRate:
    """A bridge's prefill speed in ms per prompt token, averaged over its recent requests."""

    ms_per_token: Optional[float] = None

    def record(self, end: StreamEnd) -> None:
        """Take the measurement of one finished stream (ignored when it carries none)."""
        prompt = end.usage.get("prompt_tokens")
        prefill_ms = end.timings.get("prefill_ms")
        if not isinstance(prompt, int) or not isinstance(prefill_ms, (int, float)) or prefill_ms < 0:
            return
        fresh = prompt - int(end.usage.get("cached_tokens") or 0)  # a reused KV prefix is not prefilled
        if fresh < 1:
            return
        rate = prefill_ms / fresh
        self.ms_per_token = rate if self.ms_per_token is None else (
            SMOOTHING * rate + (1 - SMOOTHING) * self.ms_per_token)


def first_token_budget(prompt_tokens: int, ms_per_token: Optional[float], *, floor: float,
                       cap: float) -> float:
    """Seconds to wait for the first token of a ``prompt_tokens`` prompt on a bridge that prefills at
    ``ms_per_token`` (None: not measured, the cap)."""
    if ms_per_token is None:
        return cap
    return min(cap, max(floor, SLACK * prompt_tokens * ms_per_token / 1000.0))
