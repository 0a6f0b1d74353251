"""The text-to-image blueprint mounted in another Flask app under a prefix, as the bridge mounts it."""

import base64

from flask import Flask

from image_engine.generate_service import GenConfig, GenerateService
from image_engine.routes_generate import create_generate_blueprint


def test_blueprint_serves_under_a_prefix_in_a_foreign_app(tiny_model):
    service = GenerateService(GenConfig(model_root=tiny_model, default_size=(64, 64), watch_interval=0))
    host = Flask("host")

    @host.post("/generate")
    def llm_generate():  # the host's own /generate (rkllama's) must stay untouched
        return {"host": True}

    host.register_blueprint(create_generate_blueprint(service), url_prefix="/image")
    client = host.test_client()
    try:
        assert client.post("/generate", json={}).json == {"host": True}
        r = client.post("/image/generate", json={"prompt": "a cat", "seed": 3, "response_format": "b64_json"})
        assert r.status_code == 200 and base64.b64decode(r.json["image"])[:4] == b"\x89PNG"
        bad = client.post("/image/generate", json={"prompt": "a cat", "seed": -5})
        assert bad.status_code == 400 and bad.json["error"]["code"] == "bad_input"
        assert client.get("/image/api/modes").json["current_mode"] == "default"
        lines = client.post("/image/generate/stream", json={"prompt": "a", "num_inference_steps": 2}).data
        assert lines.count(b"\n") == 4  # start, 2 steps, done
    finally:
        service.close()
