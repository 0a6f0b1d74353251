"""Shared benchmark helpers: statistics and markdown tables. Benchmarks measure alternatives side by side
in one run and report ratios; absolute numbers depend on the machine."""

from __future__ import annotations

import statistics
from typing import Iterable, List, Sequence


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def percentile(xs: Sequence[float], q: float) -> float:
    data = sorted(xs)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def table(header: Sequence[str], rows: List[Sequence]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
