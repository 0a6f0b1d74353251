"""``POST /v1/embeddings`` on the gateway: OpenAI's embeddings, computed by a bridge that serves the model
(the pool picks it as for a chat) from the model's last hidden layer, mean-pooled over each input's tokens.

``input`` is a string or a list of 1 to 64 non-empty strings (token arrays are refused: the bridge
tokenizes); ``encoding_format`` is ``float`` (default) or ``base64`` (little-endian float32, what the
official ``openai`` client asks for). A server that cannot embed (a runtime without hidden states, a
stock rkllama without an embeddings route) is a 501 that says so.
"""

from __future__ import annotations

import base64
from typing import Any, Dict, List

import numpy as np
from aiohttp import web

from exo_rk import errors
from exo_rk.gateway_body import read_json
from exo_rk.gateway_context import DEFAULT_MODEL_KEY, ENGINE_KEY, bridge_error, request_id
from rk_common.errors import ApiError

MAX_INPUTS = 64
ENCODINGS = ("float", "base64")


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(message, status=400, code="invalid_request", param=param)


def parse_embeddings_request(body: Any) -> Dict[str, Any]:
    """The validated fields of an embeddings request (``model``, ``texts``, ``encoding``); raises a 400
    ``ApiError`` naming the field."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object", "body")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid("'model' must be a non-empty string", "model")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(isinstance(t, int) or isinstance(t, list) for t in texts):
        raise _invalid("'input' as token ids is not supported here; send the text", "input")
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_INPUTS \
            or not all(isinstance(t, str) and t for t in texts):
        raise _invalid(f"'input' must be a non-empty string or a list of 1 to {MAX_INPUTS} of them", "input")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise _invalid(f"'encoding_format' must be one of {', '.join(ENCODINGS)}", "encoding_format")
    if body.get("dimensions") is not None:
        raise _invalid("'dimensions' is not supported: a vector has the model's hidden size", "dimensions")
    return {"model": model, "texts": texts, "encoding": encoding or "float"}


def _encoded(vector: List[float], encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def handle_embeddings(request: web.Request) -> web.Response:
    req = parse_embeddings_request(await read_json(request))
    engine = request.app[ENGINE_KEY]
    model = req["model"] or request.app[DEFAULT_MODEL_KEY]
    rid = request_id(request)
    try:
        if model not in engine.cards:
            await engine.discover_models()  # a bridge model without a card gets one
        card = engine.card_for(model)
        reply = await engine.backend.embed(card.bridge_model, req["texts"])
    except errors.UnknownModel as exc:
        raise ApiError(str(exc), status=404, code="model_not_found", param="model") from None
    except errors.EmbeddingsUnsupported as exc:
        raise ApiError(f"model {model} cannot give embeddings here: {exc.message}", status=501,
                       code="embeddings_not_supported") from None
    except errors.BridgeError as exc:
        raise bridge_error(exc, rid) from None
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, req["encoding"])}
            for i, v in enumerate(reply.vectors)]
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return web.json_response({"object": "list", "model": model, "data": data, "usage": usage})
