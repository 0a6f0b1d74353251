"""HTTP routes of super-resolution, as a Flask blueprint any app can mount (image-engine, the bridge).

``POST /superres`` takes the image as the multipart field ``file`` (or as the raw body) and the
parameters ``magnitude``, ``out_format`` and ``quality`` as form fields or query parameters.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from rk_common.flask_http import error_response

from .errors import BadInput, ImageEngineError, TooLarge
from .sr_service import SRResult, SRService

__all__ = ["SRService", "SRResult", "create_sr_blueprint", "error_response"]


def _param(name: str):
    """A parameter from the form fields, else from the query string (the seed's curl example uses both)."""
    value = request.form.get(name)
    return value if value not in (None, "") else request.args.get(name)


def _upload(max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"upload of {request.content_length} bytes exceeds SR_MAX_UPLOAD_BYTES={max_bytes}")
    if request.mimetype == "multipart/form-data":
        f = request.files.get("file")
        if f is None:
            raise BadInput("multipart field 'file' is missing (curl -F \"file=@input.png\" ...)")
        data = f.read(max_bytes + 1)
    else:
        data = request.get_data(cache=False)
        if not data:
            raise BadInput("send the image as the multipart field 'file' or as the request body")
    if len(data) > max_bytes:
        raise TooLarge(f"upload exceeds SR_MAX_UPLOAD_BYTES={max_bytes} bytes")
    return data


def create_sr_blueprint(service: SRService) -> Blueprint:
    """Routes over ``service``: ``POST /superres`` and ``GET /api/superres/status``."""
    bp = Blueprint("superres", __name__)
    # Registered on the blueprint so that a host app (the bridge) answers these routes' errors the same way.
    bp.register_error_handler(ImageEngineError, error_response)

    @bp.post("/superres")
    def superres():
        data = _upload(service.config.max_upload_bytes)
        result = service.upscale_bytes(data, _param("magnitude"), _param("out_format"), _param("quality"))
        return Response(result.data, mimetype=result.mimetype, headers=result.headers)

    @bp.get("/api/superres/status")
    def status():
        return jsonify(service.stats())

    return bp
