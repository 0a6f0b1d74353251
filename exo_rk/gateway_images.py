"""``POST /v1/images/generations`` on the gateway: OpenAI's image shape over the same engine path exo uses
for image models (``RKLLMInferenceEngine`` delegating to ``RKNNImageInferenceEngine``)."""

from __future__ import annotations

import base64
import io
import time
import uuid
from typing import Any, Dict

from aiohttp import web
from PIL import Image

from exo_rk import errors
from exo_rk.compat import full_shard
from exo_rk.gateway_context import ENGINE_KEY, bridge_error
from exo_rk.model_cards import IMAGE_MODEL_IDS
from rk_common.errors import ApiError

DEFAULT_IMAGE_MODEL = "stable-diffusion-2-1-base"
IMAGE_LAYERS = 31  # exo's card for stable-diffusion-2-1-base; the whole model is one shard here
_PASSED = ("size", "num_inference_steps", "guidance_scale", "seed", "mode")


class InvalidImageRequest(ValueError):
    pass


def parse_image_request(body: Any) -> Dict[str, Any]:
    """Validated fields of an OpenAI image request; raises InvalidImageRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidImageRequest("the body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidImageRequest("'prompt' must be a non-empty string")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape
        raise InvalidImageRequest("'prompt' is not valid Unicode (lone surrogate)") from None
    model = body.get("model") or DEFAULT_IMAGE_MODEL
    if model not in IMAGE_MODEL_IDS:
        raise InvalidImageRequest(f"'model' must be one of {', '.join(sorted(IMAGE_MODEL_IDS))}")
    if body.get("n", 1) != 1:
        raise InvalidImageRequest("'n' must be 1 (one image per request)")
    if body.get("response_format", "b64_json") != "b64_json":
        raise InvalidImageRequest("'response_format' must be 'b64_json' (no image hosting here)")
    size = body.get("size")
    if size is not None and (not isinstance(size, str) or size.count("x") != 1
                             or not all(p.isdigit() for p in size.split("x"))):
        raise InvalidImageRequest("'size' must look like '512x512'")
    params = {k: body[k] for k in _PASSED if body.get(k) is not None}
    return {"model": model, "prompt": prompt, "params": params}


def _invalid(message: str) -> ApiError:
    return ApiError(message, status=400, code="invalid_request")


async def handle_image_generations(request: web.Request) -> web.Response:
    from exo_rk.image_engine import ImageGenerationError, ImageRequestRefused, generate_like_exo

    try:
        req = parse_image_request(await request.json())
    except ValueError as exc:  # JSON errors are ValueErrors too
        raise _invalid(str(exc)) from None
    engine = request.app[ENGINE_KEY]
    try:
        image, _state = await generate_like_exo(engine, full_shard(req["model"], IMAGE_LAYERS), req["prompt"],
                                                request_id=uuid.uuid4().hex, params=req["params"])
    except ImageRequestRefused as exc:  # the image server's own validation (size, steps, mode)
        raise _invalid(str(exc)) from None
    except ImageGenerationError as exc:
        raise ApiError(str(exc), status=502, code="image_generation_failed") from None
    except errors.BridgeError as exc:
        raise bridge_error(exc) from None
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return web.json_response({"created": int(time.time()),
                              "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"),
                                        "revised_prompt": req["prompt"]}]})
