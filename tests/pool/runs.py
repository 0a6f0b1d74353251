"""Driving a ``BridgePool`` the way the engine does, and reading what each request saw."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from exo_rk.client import GenerationParams, StreamEnd, TokenEvent
from exo_rk.pool import BridgePool

PROMPT = [9707, 11, 1246, 525, 498, 30]  # any ids inside the vocabulary


@dataclass
class Run:
    """What one request saw: its tokens in order, then either the stream's end or an error."""

    tokens: List[int] = field(default_factory=list)
    end: Optional[StreamEnd] = None
    error: Optional[BaseException] = None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.end.finish_reason in ("stop", "length")


async def generate(pool: BridgePool, model: str, max_new_tokens: Optional[int] = 30,
                   run: Optional[Run] = None, prompt: Sequence[int] = PROMPT) -> Run:
    """One request through the pool; errors are recorded on the run, not raised."""
    run = run or Run()
    events = pool.stream(model, prompt, GenerationParams(max_new_tokens=max_new_tokens, temperature=0))
    try:
        async for event in events:
            if isinstance(event, TokenEvent):
                run.tokens.append(event.token_id)
            else:
                run.end = event
    except Exception as exc:  # noqa: BLE001 - the test inspects what happened
        run.error = exc
    finally:
        await events.aclose()
    return run


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
