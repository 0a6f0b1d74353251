"""Prometheus text for a ``BridgePool``, read from the pool's live state at scrape time (so the numbers can
never drift from what the pool actually does). Each render uses its own registry: several pools, or a pool
next to other metrics, never collide in prometheus_client's global registry."""

from __future__ import annotations

from typing import Iterator, List, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class PoolState(Protocol):
    """What a scrape reads from the pool (``BridgePool`` provides it; this module never imports the pool)."""

    retries: int
    no_bridge: int

    def bridges(self) -> List[dict]: ...


class PoolCollector:
    """Collects one pool's per-bridge gauges and counters."""

    def __init__(self, pool: PoolState):
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        bridges = self.pool.bridges()
        up = GaugeMetricFamily("exo_rk_pool_bridge_up", "1 when the bridge passed its last health check",
                               labels=["bridge"])
        outstanding = GaugeMetricFamily("exo_rk_pool_outstanding_requests",
                                        "Requests this pool has running or queued on the bridge",
                                        labels=["bridge"])
        external = GaugeMetricFamily("exo_rk_pool_external_requests",
                                     "Requests of other clients on the bridge at its last health check",
                                     labels=["bridge"])
        requests = CounterMetricFamily("exo_rk_pool_requests", "Requests sent to the bridge",
                                       labels=["bridge"])
        failures = CounterMetricFamily("exo_rk_pool_errors", "Failed requests and calls by error class",
                                       labels=["bridge", "error"])
        ejections = CounterMetricFamily("exo_rk_pool_ejections", "Times the bridge was taken out of rotation",
                                        labels=["bridge"])
        loads = CounterMetricFamily("exo_rk_pool_model_loads",
                                    "Requests that made the bridge load a model it did not have",
                                    labels=["bridge", "model"])
        for b in bridges:
            url = b["url"]
            up.add_metric([url], 1.0 if b["healthy"] else 0.0)
            outstanding.add_metric([url], b["outstanding"])
            external.add_metric([url], b["external"])
            requests.add_metric([url], b["dispatched"])
            ejections.add_metric([url], b["ejections"])
            for kind, n in sorted(b["errors"].items()):
                failures.add_metric([url, kind], n)
            for model, n in sorted(b["loads"].items()):
                loads.add_metric([url, model], n)
        retries = CounterMetricFamily("exo_rk_pool_retries",
                                      "Attempts moved to another bridge before the first token")
        retries.add_metric([], self.pool.retries)
        refused = CounterMetricFamily("exo_rk_pool_no_bridge",
                                      "Requests refused because no bridge could take them")
        refused.add_metric([], self.pool.no_bridge)
        yield from (up, outstanding, external, requests, failures, ejections, loads, retries, refused)


def render(pool: PoolState) -> bytes:
    """The pool's metrics in the Prometheus text exposition format."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool))
    return generate_latest(registry)
