"""HTTP routes of text-to-image, as a Flask blueprint any app can mount (image-engine, the bridge).

- ``POST /generate``: the seed JSON body → image bytes with ``X-Seed``, ``X-Mode``, ``X-SuperRes`` (and
  ``X-SR-*`` when upscaled); JSON ``{"image": base64, ...}`` with ``"response_format": "b64_json"``,
  ``"return_base64": true``, ``?format=json`` or ``Accept: application/json``.
- ``POST /generate/stream``: the same body → NDJSON, one line per step
  (``{"type": "step", "step", "total_steps", "timestep"}``) and a last line with the image
  (``{"type": "done", ..., "image": base64 PNG}``) or ``{"type": "error", "error": {...}}``.
- ``POST /inference``: the custom SD server's body and answer (``message``, ``uid``, ``image``); images
  are saved under OUTPUTS_DIR.
- ``POST /v1/images/generations``: OpenAI's request and response shapes.
- ``GET /api/modes``, ``POST /api/modes/switch``, ``POST /api/modes/reload``, ``GET /api/models/status``,
  ``GET /api/vram``.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from rk_common.flask_http import error_response
from rk_common.validation import decode_json

from .errors import BadInput, ImageEngineError
from .gen_request import parse_generate, parse_inference, parse_openai
from .generate_service import GenerateService
from .modes import ModesError

log = logging.getLogger(__name__)


def _modes_error(exc: ModesError):
    return jsonify({"error": {"code": "bad_modes_file", "message": str(exc)}}), 422


def _json_body() -> object:
    return decode_json(request.get_data(cache=False), BadInput)


def _wants_json() -> bool:
    return request.args.get("format") == "json" or request.accept_mimetypes.best == "application/json"


def create_generate_blueprint(service: GenerateService) -> Blueprint:
    """The routes above, served by ``service``. Errors answer ``{"error": {"code", "message"}}``."""
    bp = Blueprint("text_to_image", __name__)
    bp.register_error_handler(ImageEngineError, error_response)
    bp.register_error_handler(ModesError, _modes_error)

    @bp.post("/generate")
    def generate():
        req = parse_generate(_json_body(), as_json=_wants_json())
        data, mimetype, headers = service.encode(service.generate(req))
        if not req.as_json:
            return Response(data, mimetype=mimetype, headers=headers)
        return jsonify({"image": base64.b64encode(data).decode("ascii"), "content_type": mimetype,
                        "seed": int(headers["X-Seed"]), "mode": headers["X-Mode"], "headers": headers})

    @bp.post("/generate/stream")
    def generate_stream():
        req = parse_generate(_json_body())
        return _stream(service, req)

    @bp.post("/inference")
    def inference():
        req, uid = parse_inference(_json_body())
        result = service.generate(req)
        data, _, headers = service.encode(result)
        uid, path = service.save_output(data, uid, result.generation.params.seed)
        log.info("inference uid=%s saved %s", uid, path)
        return jsonify({"message": "success", "uid": uid, "image": base64.b64encode(data).decode("ascii"),
                        "seed": int(headers["X-Seed"]), "file": path.name})

    @bp.post("/v1/images/generations")
    def openai_images():
        req, fmt = parse_openai(_json_body())
        result = service.generate(req)
        data, mimetype, headers = service.encode(result)
        b64 = base64.b64encode(data).decode("ascii")
        item = {"b64_json": b64} if fmt == "b64_json" else {"url": f"data:{mimetype};base64,{b64}"}
        item["revised_prompt"] = req.prompt
        return jsonify({"created": int(time.time()), "data": [item], "seed": int(headers["X-Seed"]),
                        "mode": headers["X-Mode"]})

    @bp.get("/api/modes")
    def modes():
        return jsonify(service.list_modes())

    @bp.post("/api/modes/switch")
    def switch():
        body = _json_body()
        if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
            raise BadInput('expected {"mode": "<name>"}')
        return jsonify(service.switch(body["mode"]))

    @bp.post("/api/modes/reload")
    def reload():
        return jsonify(service.reload())

    @bp.get("/api/models/status")
    def status():
        return jsonify(service.status())

    @bp.get("/api/vram")
    def vram():
        return jsonify(service.vram())

    return bp


_END = object()


def _stream(service: GenerateService, req) -> Response:
    """Run the generation on a helper thread and relay its events; errors before the start are HTTP errors."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def on_start(mode, params) -> None:
        events.put({"type": "start", "mode": mode.name, "seed": params.seed, "width": params.width,
                    "height": params.height, "total_steps": params.steps})

    def on_step(event) -> None:
        events.put({"type": "step", "step": event.step, "total_steps": event.total_steps,
                    "timestep": event.timestep})

    def run() -> None:
        try:
            result = service.generate(req, on_step=on_step, on_start=on_start, cancel=cancel)
            data, mimetype, headers = service.encode(result)
            p = result.generation.params
            events.put({"type": "done", "step": p.steps, "total_steps": p.steps, "seed": p.seed,
                        "mode": result.mode.name, "width": result.image.shape[1], "height": result.image.shape[0],
                        "content_type": mimetype, "headers": headers,
                        "image": base64.b64encode(data).decode("ascii")})
        except ImageEngineError as exc:
            events.put(exc)
        except Exception as exc:
            log.exception("streamed generation failed")
            events.put(ImageEngineError(f"{type(exc).__name__}: {exc}"))
        finally:
            events.put(_END)

    threading.Thread(target=run, name="generate-stream", daemon=True).start()
    first = events.get()
    if isinstance(first, ImageEngineError):
        events.get()  # the end marker
        return error_response(first)

    def body(first_event) -> Iterator[bytes]:
        item = first_event
        try:
            while item is not _END:
                if isinstance(item, ImageEngineError):
                    item = {"type": "error", "error": {"code": item.code, "message": item.message}}
                yield (json.dumps(item) + "\n").encode()
                item = events.get()
        finally:
            if item is not _END:
                cancel.set()
                log.info("stream closed by the client; cancelling the generation")

    return Response(body(first), mimetype="application/x-ndjson", headers={"Cache-Control": "no-cache"})
