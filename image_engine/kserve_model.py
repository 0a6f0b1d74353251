"""The text-to-image service as a KServe model, served by kserve's own ``ModelServer`` (``image-engine kserve``).

- V1 ``POST /v1/models/<name>:predict`` takes the SDXL runtime's payload, ``{"instances": [{"prompt",
  "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height", "seed", …}]}``, and answers
  ``{"predictions": [{"model_name", "prompt", "image": {"format": "PNG", "b64"}, "seed"}]}``.
- V2 ``POST /v2/models/<name>/infer`` takes named tensors (``prompt`` BYTES, optional ``negative_prompt``,
  ``num_inference_steps``, ``guidance_scale``, ``seed``, ``width``, ``height``) and gives ``image`` (BYTES,
  the base64 PNG) and ``seed`` (INT64).
- Readiness and liveness are kserve's routes (``/v1/models/<name>``, ``/v2/health/ready``, ``/v2/models/<name>/ready``).

Generation goes through the same :class:`GenerateService` as ``POST /generate`` (queue, timeout, modes,
super-resolution), so one seed gives the same image on both. Fields that only an SDXL refiner or second text
encoder can honour are refused with a 400 naming them; the two that seed clients send on every request
(``denoising_limit``, ``crops_coords_top_left``) change nothing without a refiner — as in the SDXL runtime
when it runs without one — and are listed in the prediction's ``ignored_fields``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from kserve import InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput

from .errors import BadInput, ImageEngineError
from .gen_request import GenerateRequest, parse_generate
from .generate_service import GenerateService

log = logging.getLogger(__name__)

MAX_INSTANCES = 8
# Need SDXL's refiner, second text encoder or image-to-image: nothing here can honour them.
REFUSED_FIELDS = frozenset({
    "use_refiner", "refiner_id", "denoising_start", "denoising_end", "image", "strength", "prompt_2",
    "negative_prompt_2", "original_size", "target_size", "negative_original_size", "negative_target_size",
    "negative_crops_coords_top_left", "aesthetic_score", "negative_aesthetic_score"})
IGNORED_FIELDS = frozenset({"denoising_limit", "crops_coords_top_left"})
_V2_INPUTS = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "width", "height"}


def parse_instance(instance: Any) -> tuple[GenerateRequest, list[str]]:
    """One V1 instance → (the validated request, the fields accepted but ignored); BadInput names a bad one."""
    if not isinstance(instance, dict):
        raise BadInput("each instance must be a JSON object with at least a 'prompt'")
    refused = sorted(REFUSED_FIELDS & set(instance))
    if refused:
        raise BadInput(f"field(s) {refused} need an SDXL refiner, second text encoder or image input, which "
                       "this LCM model server does not have; remove them")
    ignored = sorted(IGNORED_FIELDS & set(instance))
    body = {k: v for k, v in instance.items() if k not in IGNORED_FIELDS}
    return parse_generate(body), ignored


class LCMKServeModel(Model):
    """A kserve model whose predict runs the LCM pipeline (and the SR post-process a mode asks for)."""

    def __init__(self, name: str, service_factory):
        super().__init__(name)
        self._factory = service_factory
        self.service: GenerateService | None = None

    def load(self) -> bool:
        self.service = self._factory()
        if not self.service.enabled:
            raise RuntimeError("no LCM model configured: pass --model-root or --modes")
        self.ready = True
        log.info("kserve model %r ready", self.name)
        return self.ready

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput("expected a JSON object with an 'instances' list (V1 protocol)")
        instances = payload["instances"]
        if not 1 <= len(instances) <= MAX_INSTANCES:
            raise InvalidInput(f"'instances' must hold 1-{MAX_INSTANCES} requests, got {len(instances)}")
        try:
            parsed = [parse_instance(item) for item in instances]
        except BadInput as exc:
            raise InvalidInput(str(exc)) from None
        predictions = []
        for req, ignored in parsed:
            data, mimetype, seed = await self._generate(req)
            prediction = {"model_name": self.name, "prompt": req.prompt, "seed": seed,
                          "image": {"format": mimetype.split("/")[-1].upper(),
                                    "b64": base64.b64encode(data).decode("ascii")}}
            if ignored:
                prediction["ignored_fields"] = ignored
            predictions.append(prediction)
        return {"predictions": predictions}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        body: dict[str, Any] = {}
        for tensor in request.inputs:
            if tensor.name not in _V2_INPUTS:
                raise InvalidInput(f"unknown input {tensor.name!r}; accepted: {sorted(_V2_INPUTS)}")
            values = list(tensor.data or [])
            if len(values) != 1:
                raise InvalidInput(f"input {tensor.name!r} must hold exactly one value")
            value = values[0]
            body[tensor.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            req = parse_generate(body)
        except BadInput as exc:
            raise InvalidInput(str(exc)) from None
        data, _mimetype, seed = await self._generate(req)
        outputs = [InferOutput("image", [1], "BYTES", [base64.b64encode(data).decode("ascii")]),
                   InferOutput("seed", [1], "INT64", [seed])]
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs)

    async def _generate(self, req: GenerateRequest) -> tuple[bytes, str, int]:
        """Run one generation off the event loop; image-engine errors become kserve's or HTTP errors."""
        from fastapi import HTTPException

        try:
            result = await asyncio.to_thread(self.service.generate, req)
        except BadInput as exc:
            raise InvalidInput(str(exc)) from None
        except ImageEngineError as exc:
            status = getattr(exc, "status", 500)
            extra = {"Retry-After": "1"} if status in (429, 503) else None
            raise HTTPException(status_code=status, detail=str(exc), headers=extra) from None
        data, mimetype, _headers = self.service.encode(result)
        return data, mimetype, result.generation.params.seed

    def stop(self) -> None:
        if self.service is not None:
            self.service.close()
