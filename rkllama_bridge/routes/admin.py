"""Liveness, readiness and metrics."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify

from .common import service

bp = Blueprint("admin", __name__)


@bp.get("/health")
def health():
    svc = service()
    snap = svc.metrics.snapshot()
    models = [{"name": e.name, "instances": len(e.queue.handles), "busy": e.queue.busy, "queued": e.queue.queued,
               "memory_mb": round(e.memory_mb, 1), "last_used": e.last_used} for e in svc.loaded()]
    return jsonify({"status": "ok", "readiness": svc.readiness(), "runtime": svc.runtime.describe(), "models": models,
                    "queue_max": svc.options.queue_max, "active": sum(snap["active"].values()),
                    "aborts_total": snap["aborts_total"], "lifecycle": svc.lifecycle_view(),
                    "memory": svc.memory_view(), "npu": svc.arbiter.snapshot(), "threads": _lanes(),
                    "uptime_s": round(time.monotonic() - current_app.config["BRIDGE_STARTED"], 3)})


@bp.get("/health/ready")
def ready():
    """Readiness, for probes: 200 once serving, 503 while loading the models to restore or stopping."""
    state = service().readiness()
    return jsonify({"status": state}), 200 if state == "ready" else 503


def _lanes():
    """Threads and requests in flight per lane of the HTTP front (None when served otherwise, e.g. tests)."""
    lanes = current_app.config.get("HTTP_LANES")
    return lanes() if lanes else None


@bp.get("/metrics")
def metrics():
    return Response(service().metrics.render(), mimetype="text/plain; version=0.0.4")
