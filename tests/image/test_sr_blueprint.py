"""The SR routes mounted in someone else's Flask app (as the bridge does), served by waitress in-process."""

from __future__ import annotations

import threading

import pytest
import waitress
from flask import Flask

from image_engine.config import SRConfig
from image_engine.routes_sr import SRService, create_sr_blueprint
from tests.support import ServerProcess

from .imgutil import make_image, post_image, to_png


@pytest.fixture()
def host_app_server(sr_model):
    service = SRService(SRConfig(model_path=sr_model, num_workers=1))
    app = Flask("host")  # no image_engine error handlers: the blueprint must bring its own
    app.register_blueprint(create_sr_blueprint(service))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = ServerProcess([])  # used only as an HTTP client
    client.port = int(server.effective_port)
    try:
        yield client
    finally:
        server.close()  # the daemon thread's loop notices within a second; nothing waits for it
        service.close()


def test_blueprint_serves_superres_and_json_errors_in_a_host_app(host_app_server):
    status, headers, body = post_image(host_app_server, to_png(make_image(10, 20)), query="?out_format=webp")
    assert status == 200 and headers["X-SR-Format"] == "webp" and headers["X-SR-Scale"] == "3"
    status, headers, body = post_image(host_app_server, b"not an image")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert b'"code":"bad_input"' in body.replace(b" ", b"")
    status, _, _ = host_app_server.request("GET", "/api/superres/status")
    assert status == 200
