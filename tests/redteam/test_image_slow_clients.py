"""The image service (``image-engine serve``) under slow clients: as the bridge (same front)."""

from __future__ import annotations

import json

from .rawhttp import connect, hold_served_connections, read_response
from .test_bridge_slow_clients import HEAD_DEADLINE_S, slowloris_against


def test_200_slowloris_connections_leave_health_answering(start_image_service):
    img = start_image_service("--header-timeout", str(HEAD_DEADLINE_S))
    probes = slowloris_against(img)
    assert probes and probes == [200] * len(probes), probes


def test_connections_beyond_the_limit_get_a_json_503(start_image_service):
    img = start_image_service("--max-connections", "10")
    held = hold_served_connections(img.port, 10)
    extra = connect(img.port)
    try:
        status, headers, body = read_response(extra, timeout=30)
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["error"]["code"] == "unavailable"
    finally:
        for s in held + [extra]:
            s.close()
