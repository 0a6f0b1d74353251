"""``RKNNImageInferenceEngine``: exo's image-generation step protocol over the streaming image route.

How legacy exo drives image models (``stable-diffusion-2-1-base``): the API calls ``process_prompt`` with
``inference_state={"image": None}``; the node calls ``infer_prompt`` (``encode`` then ``infer_tensor``
with the un-reshaped encoding), and after every call it increments ``state["step"]`` when
``is_step_finished`` is set and, unless ``is_finished``, calls ``infer_tensor`` again with the previous
output and the state. Each output goes to the API: a list ``[step, total_steps]`` is written as a
progress line, an ``HxWx3`` uint8 array is saved as the image.

This engine sends the prompt once to ``POST /generate/stream`` (image-engine serve, or the bridge that
mounts it) and answers each call with the next step: ``[step, total_steps]`` while the UNet runs (a full
VAE decode per step, as the MLX pipeline does, would cost seconds per step on the NPU), then the final
image with ``is_finished``. A failure before the first step raises (exo's API answers it with an error);
after that it is logged and the request ends, since exo would otherwise wait for its long timeout.

=======================  ================  ======================================================
variable                 default           meaning
=======================  ================  ======================================================
RKNN_IMAGE_SERVERS       (the bridges)     comma list of image servers (host:port or base URLs),
                                           e.g. a standalone ``image-engine serve`` on :4200;
                                           default: each bridge (RKLLM_SERVERS / RKLLM_SERVER_HOST
                                           and PORT) + ``/image``, where the bridge mounts them
RKNN_IMAGE_MODE          (server's)        LCM mode that exo's image model ids map to
RKNN_IMAGE_STEP_TIMEOUT  600               seconds to wait for one step (RKNN VAE decodes are slow)
=======================  ================  ======================================================
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from exo_rk.compat import InferenceEngine, Shard, ShardDownloader
from exo_rk.errors import PartialShardError
from exo_rk.request_state import RequestTable
from exo_rk.settings import Settings
from rk_common.timeouts import within

log = logging.getLogger(__name__)

STREAM_PATH = "/generate/stream"
# The bridge answers rkllama's own POST /generate, so it mounts the image routes under this prefix.
BRIDGE_IMAGE_PREFIX = "/image"
# Keys a caller (the gateway) may put in the first call's inference_state; exo itself sets none.
STATE_IMAGE_PARAMS = "rknn_image_params"
_FORWARDED = ("size", "num_inference_steps", "guidance_scale", "seed", "mode")
# exo model ids served by the LCM pipeline; the value names the mode (None: RKNN_IMAGE_MODE / server's).
IMAGE_MODEL_MODES: dict[str, str | None] = {"stable-diffusion-2-1-base": None}


class ImageGenerationError(RuntimeError):
    """The image server refused or failed a generation. The message says where (for the log);
    ``reason`` is the server's own words, without addresses, when it gave any (for a client)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class ImageRequestRefused(ImageGenerationError):
    """The image server answered 4xx: the request itself is wrong (bad size, steps, mode...)."""


@dataclass(frozen=True)
class ImageSettings:
    """Where the image servers are, which mode exo's image ids use, and how long a step may take."""

    servers: tuple[str, ...]
    mode: str | None = None
    step_timeout: float = Settings.image_step_timeout
    connect_timeout: float = Settings.connect_timeout
    token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, base: Settings | None = None) -> ImageSettings:
        """From ``base`` (the LLM engine's settings) or the environment's: ``image_servers``, else the image
        routes of the same bridges, so both engines talk to the same boards."""
        base = base or Settings.from_env(env)
        servers = base.image_servers or tuple(server + BRIDGE_IMAGE_PREFIX for server in base.servers)
        return cls(servers, base.image_mode, base.image_step_timeout, base.connect_timeout, base.token)


class _PromptCodec:
    """exo reads ``tokenizer.eos_token_id``; image prompts travel as UTF-8 bytes, so there is no EOS."""

    eos_token_id = -1

    @staticmethod
    def encode(prompt: str) -> np.ndarray:
        return np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).copy()

    @staticmethod
    def decode(tokens: Any) -> str:
        return bytes(np.asarray(tokens, dtype=np.uint8).ravel().tolist()).decode("utf-8", errors="replace")


class _ImageJob:
    """One streamed generation: a reader task filling a queue with the server's NDJSON events."""

    def __init__(self, total_steps: int | None = None):
        self.events: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.total_steps = total_steps
        self.steps_seen = 0
        self.meta: dict = {}

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class RKNNImageInferenceEngine(InferenceEngine):
    """exo engine for LCM text-to-image on RK boards; ``RKNNImageInferenceEngine(shard_downloader)``."""

    def __init__(self, shard_downloader: ShardDownloader | None = None, *, settings: ImageSettings | None = None,
                 request_ttl: float = 900.0, max_requests: int = 64):
        self.session: dict[str, Any] = {}  # exo's base class shares one dict between engines otherwise
        self.shard_downloader = shard_downloader
        self.settings = settings or ImageSettings.from_env()
        self.shard: Shard | None = None
        self.tokenizer = _PromptCodec()
        self._jobs: RequestTable[_ImageJob] = RequestTable(request_ttl, max_requests)
        self._http: aiohttp.ClientSession | None = None
        self._next_server = itertools.cycle(range(len(self.settings.servers)))

    # -- exo's abstract interface ---------------------------------------------------------------------

    async def encode(self, shard: Shard, prompt: str) -> np.ndarray:
        """The prompt as UTF-8 bytes (exo passes this array, un-reshaped, to the first ``infer_tensor``)."""
        await self.ensure_shard(shard)
        return self.tokenizer.encode(prompt)

    async def decode(self, shard: Shard, tokens: np.ndarray) -> str:
        return self.tokenizer.decode(tokens)

    async def sample(self, x: np.ndarray, temp: float = 0.0, top_p: float = 1.0) -> np.ndarray:
        return x  # image outputs are not sampled; exo's node does not call this for image models

    async def load_checkpoint(self, shard: Shard, path: str) -> None:
        log.info("load_checkpoint(%s) ignored: image models live on the image server", path)

    async def ensure_shard(self, shard: Shard) -> None:
        """Accept whole image models only: the image server runs all of text encoder, UNet and VAE."""
        if shard.model_id not in IMAGE_MODEL_MODES:
            raise ValueError(f"{shard.model_id!r} is not an image model of this engine "
                             f"({sorted(IMAGE_MODEL_MODES)})")
        if shard.start_layer != 0 or shard.end_layer != shard.n_layers - 1:
            raise PartialShardError(f"{shard.model_id} layers {shard.start_layer}-{shard.end_layer} of "
                                    f"{shard.n_layers}: the LCM pipeline runs whole on one board; give this "
                                    "node the whole model (scale images per request, not per layer)")
        self.shard = shard

    async def infer_tensor(self, request_id: str, shard: Shard, input_data: np.ndarray,
                           inference_state: dict | None = None) -> tuple[Any, dict | None]:
        """One denoising step of ``request_id``: ``([step, total], state)``, the last one ``(image, state)``."""
        await self.ensure_shard(shard)
        self._jobs.expire()
        state = dict(inference_state or {})
        job = self._jobs.get(request_id)
        if job is None:
            if self._jobs.was_ended(request_id):
                log.warning("image request %s called after it ended; reporting it finished", request_id)
                return [0, 0], {**state, "is_finished": True, "is_step_finished": False}
            job = await self._start(request_id, shard, input_data, state)
        try:
            return await self._next_step(request_id, job, state)
        except Exception as exc:  # noqa: BLE001 - after the first step exo must get an ending, not a hang
            log.error("image request %s failed at step %d: %s", request_id, job.steps_seen + 1, exc)
            self._jobs.finish(request_id)
            total = job.total_steps or job.steps_seen
            return [job.steps_seen, total], {**state, "step": max(job.steps_seen - 1, 0), "total_steps": total,
                                             "is_step_finished": True, "is_finished": True, "error": str(exc)}

    async def cleanup(self) -> None:
        """Cancel every stream and close the HTTP session."""
        self._jobs.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the stream ----------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else None
            self._http = aiohttp.ClientSession(headers=headers)
        return self._http

    def _body(self, shard: Shard, input_data: Any, state: dict) -> dict:
        prompt = input_data if isinstance(input_data, str) else self.tokenizer.decode(input_data)
        body: dict = {"prompt": prompt, "superres": False}
        mode = IMAGE_MODEL_MODES.get(shard.model_id) or self.settings.mode
        if mode:
            body["mode"] = mode
        params = state.get(STATE_IMAGE_PARAMS) or {}
        body.update({k: params[k] for k in _FORWARDED if params.get(k) is not None})
        return body

    async def _start(self, request_id: str, shard: Shard, input_data: Any, state: dict) -> _ImageJob:
        """Open the stream on the first server that accepts it; errors here raise (exo answers them)."""
        body = self._body(shard, input_data, state)
        errors = []
        for _ in self.settings.servers:
            url = self.settings.servers[next(self._next_server)].rstrip("/") + STREAM_PATH
            try:
                resp = await self._session().post(url, json=body, timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.settings.connect_timeout, sock_read=self.settings.step_timeout))
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
                continue
            if resp.status != 200:
                text = await resp.text()
                resp.release()
                message = f"{url} answered {resp.status}: {_error_message(text)}"
                if resp.status in (429, 503):  # busy or not serving images: another server may be free
                    errors.append(message)
                    continue
                raise (ImageRequestRefused if 400 <= resp.status < 500 else ImageGenerationError)(
                    message, _error_message(text))
            job = _ImageJob(total_steps=None)
            job.task = asyncio.create_task(self._read(resp, job))
            self._jobs.put(request_id, job)
            log.info("image request %s streaming from %s (%r)", request_id, url, body["prompt"][:60])
            return job
        raise ImageGenerationError("no image server reachable: " + "; ".join(errors))

    async def _read(self, resp: aiohttp.ClientResponse, job: _ImageJob) -> None:
        try:
            async for raw in resp.content:
                if raw.strip():
                    await job.events.put(json.loads(raw))
            await job.events.put({"type": "error", "error": {"message": "the image stream ended early"}})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting step
            await job.events.put({"type": "error", "error": {"message": f"{type(exc).__name__}: {exc}"}})
        finally:
            resp.close()

    async def _event(self, job: _ImageJob) -> dict:
        event = await within(job.events.get(), self.settings.step_timeout)
        if event.get("type") == "error":
            reason = event.get("error", {}).get("message", "image generation failed")
            raise ImageGenerationError(reason, reason)
        if event.get("type") == "start":
            job.total_steps = int(event["total_steps"])
            job.meta = event
            return await self._event(job)
        return event

    async def _next_step(self, request_id: str, job: _ImageJob, state: dict) -> tuple[Any, dict]:
        event = await self._event(job)
        if event.get("type") != "step":
            raise ImageGenerationError(f"expected a step event, got {event.get('type')!r}")
        job.steps_seen = int(event["step"])
        total = int(event["total_steps"])
        out_state = {**state, "step": job.steps_seen - 1, "total_steps": total, "is_step_finished": True,
                     "is_finished": False, "seed": job.meta.get("seed"), "mode": job.meta.get("mode")}
        if job.steps_seen < total:
            return [job.steps_seen, total], out_state
        done = await self._event(job)
        if done.get("type") != "done":
            raise ImageGenerationError(f"expected the final image, got {done.get('type')!r}")
        self._jobs.finish(request_id)
        return _png_to_array(done["image"]), {**out_state, "is_finished": True}


    def abort(self, request_id: str) -> None:
        """Stop a generation whose caller left: its stream closes, so the image server aborts it."""
        self._jobs.finish(request_id, "abort")


def _png_to_array(b64: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _error_message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text[:300]


async def generate_like_exo(engine: InferenceEngine, shard: Shard, prompt: str, *, request_id: str,
                            params: Mapping[str, Any] | None = None,
                            on_step: Any = None) -> tuple[np.ndarray, dict]:
    """Drive ``engine`` through exo's node loop for an image model and return (HxWx3 uint8, final state).

    For callers without exo (the gateway's ``/v1/images/generations``): ``infer_prompt`` once, then
    ``infer_tensor`` with the previous output until ``is_finished``, incrementing ``step`` as exo's node
    does. ``params`` (size, num_inference_steps, guidance_scale, seed, mode) go to the image server;
    ``on_step(step, total_steps)`` is awaited after each step. Raises :class:`ImageGenerationError` when
    the request ends without an image.
    """
    state: dict = {"image": None, STATE_IMAGE_PARAMS: dict(params or {})}
    result, state = await engine.infer_prompt(request_id, shard, prompt, state)
    while True:
        finished = state.get("is_finished", False)
        if state.get("is_step_finished"):
            state["step"] = state.get("step", 0) + 1
        if on_step is not None:
            await on_step(state["step"], state.get("total_steps", 0))
        if finished:
            break
        result, state = await engine.infer_tensor(request_id, shard, result, state)
    if not isinstance(result, np.ndarray):
        raise ImageGenerationError(state.get("error") or "the image request ended without an image")
    return result, state
