"""Prometheus metrics of one bridge (own registry, so several bridges can live in one process)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Dict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
TOK_S_BUCKETS = (1, 2, 5, 8, 12, 16, 24, 32, 48, 64, 128, 256, 1024)


class BridgeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._queued: Dict[str, int] = defaultdict(int)
        self._active: Dict[str, int] = defaultdict(int)
        self.aborts_total = 0
        self._service = None
        self.requests = Counter("bridge_generations_total", "Finished generations by reason",
                                ["model", "finish_reason"], registry=self.registry)
        self.tokens = Counter("bridge_generated_tokens_total", "Tokens generated", ["model"], registry=self.registry)
        self.aborts = Counter("bridge_aborts_total", "Generations aborted (client gone or stop string)",
                              ["model"], registry=self.registry)
        self.ttft = Histogram("bridge_ttft_seconds", "Time to first token, queue included", ["model"],
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.decode = Histogram("bridge_decode_tokens_per_second", "Decode speed per generation", ["model"],
                                buckets=TOK_S_BUCKETS, registry=self.registry)
        self.registry.register(_LiveState(self))

    def bind(self, service) -> None:
        self._service = service

    def queued(self, model: str, delta: int) -> None:
        with self._lock:
            self._queued[model] += delta

    def active(self, model: str, delta: int) -> None:
        with self._lock:
            self._active[model] += delta

    def aborted(self, model: str) -> None:
        with self._lock:
            self.aborts_total += 1
        self.aborts.labels(model).inc()

    def finished(self, model: str, reason: str, tokens: int, timings: dict) -> None:
        self.requests.labels(model, reason).inc()
        self.tokens.labels(model).inc(tokens)
        if reason == "abort":
            self.aborted(model)
        if tokens:
            self.ttft.labels(model).observe(timings["ttft_ms"] / 1000)
        if tokens > 1:
            self.decode.labels(model).observe(timings["decode_tok_s"])

    def snapshot(self) -> dict:
        with self._lock:
            return {"queued": dict(self._queued), "active": dict(self._active), "aborts_total": self.aborts_total}

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    """Gauges read at scrape time, so they can never drift from the scheduler's real state."""

    def __init__(self, metrics: BridgeMetrics):
        self.metrics = metrics

    def collect(self):
        snap = self.metrics.snapshot()
        queue = GaugeMetricFamily("bridge_queue_depth", "Requests waiting for a handle", labels=["model"])
        active = GaugeMetricFamily("bridge_active_requests", "Generations running", labels=["model"])
        for model, n in snap["queued"].items():
            queue.add_metric([model], n)
        for model, n in snap["active"].items():
            active.add_metric([model], n)
        loaded = GaugeMetricFamily("bridge_loaded_instances", "Loaded handles per model", labels=["model"])
        service = self.metrics._service
        for entry in (service.loaded() if service else []):
            loaded.add_metric([entry.name], len(entry.queue.handles))
        yield queue
        yield active
        yield loaded
