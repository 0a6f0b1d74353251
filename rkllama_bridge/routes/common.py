"""What every route family shares: JSON bodies, the client-disconnect probe, starting a chat generation,
stop strings, and response helpers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from flask import Response, current_app, g, request

from rk_common import validation

from ..errors import BadRequest, BridgeError
from ..params import require_object
from ..service import BridgeService, DoneEvent, Generation, TokenEvent
from ..store import StoredModel, validate_name

MAX_STOP = 16


def service() -> BridgeService:
    return current_app.config["BRIDGE_SERVICE"]


def json_body() -> dict:
    """The request's JSON object; malformed JSON or another type is a 400 that says so."""
    return require_object(validation.decode_json(request.get_data(cache=True)))


def client_gone_probe():
    """A callable telling whether this request's client disconnected (waitress with lookahead >= 1)."""
    probe = request.environ.get("waitress.client_disconnected")
    return probe if callable(probe) else (lambda: False)


def ndjson(items: Iterable[dict]) -> Iterator[bytes]:
    for item in items:
        yield (json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8")


def streaming(body: Iterable[bytes], generation: Generation, mimetype: str) -> Response:
    """A response streamed chunk by chunk; closing it (client gone) closes the generation."""
    return Response(_ClosingStream(body, generation), mimetype=mimetype,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _ClosingStream:
    def __init__(self, body: Iterable[bytes], generation: Generation):
        self._body = iter(body)
        self._generation = generation

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close:
            close()
        self._generation.close()


def model_field(body: dict, *names: str) -> Optional[str]:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f"'{name}' must be a string", code="invalid_parameter")
            return validate_name(value)
    return None


def report_ignored(fields: dict) -> List[str]:
    """The sampling fields of this request the runtime cannot honour per request, noted for the
    ``X-Ignored-Params`` header (a seed it cannot honour is a 400 instead)."""
    g.ignored_params = service().unhonoured_params(fields)
    return g.ignored_params


def ignored_params_header(response: Response) -> Response:
    """``after_request``: name the parameters this request set that the runtime ignored."""
    ignored = g.get("ignored_params")
    if ignored:
        response.headers["X-Ignored-Params"] = ",".join(ignored)
    return response


def start_chat(model: Optional[str], messages: Sequence[dict], fields: dict, body: dict,
               **template_extra) -> Tuple[Generation, StoredModel]:
    """Template the conversation for ``model``, validate parameters and start generating; the request's
    ``truncate`` and ``keep_alive`` fields apply as on every route."""
    report_ignored(fields)
    return service().start_chat(model, messages, fields, client_gone_probe(), truncate=body.get("truncate"),
                                keep_alive=body.get("keep_alive"), **template_extra)


def stop_list(value) -> List[str]:
    """Stop strings of the Ollama and rkllama routes (the OpenAI route takes OpenAI's limit of 4)."""
    return list(validation.stop_list(value, MAX_STOP))


@dataclass
class Piece:
    text: str
    done: Optional[DoneEvent] = None


def text_pieces(generation: Generation, stops: Sequence[str] = ()) -> Iterator[Piece]:
    """The generation as text pieces, ending with one whose ``done`` is set. With stop strings, text that
    might begin a stop string is held back until it cannot; a match ends the generation (finish 'stop')."""
    held = ""
    for event in generation:
        if isinstance(event, TokenEvent):
            if not stops:
                if event.text:
                    yield Piece(event.text)
                continue
            held += event.text
            cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if held[:cut]:
                    yield Piece(held[:cut])
                generation.close()
                n = len(generation.completion_ids)
                p = len(generation.prompt_ids)
                yield Piece("", DoneEvent("stop", {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n},
                                          {}))
                return
            keep = max((k for s in stops for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
            if len(held) > keep:
                yield Piece(held[:len(held) - keep])
                held = held[len(held) - keep:]
        else:
            if held:
                yield Piece(held)
            yield Piece("", event)
            return


def speed_stats(generation: Generation, usage: dict) -> dict:
    """``usage`` with the figures rkllama's clients print: ``tokens_per_second`` (generated tokens over
    first-to-last token time) and the durations in seconds (``prompt_eval_duration`` from arrival to the
    first token, ``eval_duration``, ``total_duration``)."""
    first, last, end = generation.token_times
    now = time.monotonic()
    n = int(usage.get("completion_tokens") or len(generation.completion_ids))
    evaluation = 0.0 if first is None else max((last if last is not None and last > first else end or now) - first,
                                               1e-9)
    return {**usage, "tokens_per_second": round(n / evaluation, 2) if evaluation else 0.0,
            "prompt_eval_duration": round((first - generation.started) if first is not None else 0.0, 4),
            "eval_duration": round(evaluation, 4), "total_duration": round((end or now) - generation.started, 4)}


def embed_inputs(body: dict, *fields: str) -> Tuple[str, List[str], object]:
    """(model, texts, keep_alive) of an embeddings request; the texts are the first of ``fields`` given,
    a string or a list of strings."""
    value = next((body[f] for f in fields if body.get(f) is not None), None)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts) \
            or len(texts) > 64:
        raise BadRequest(f"'{fields[0]}' must be a non-empty string or a list of 1 to 64 of them",
                         code="invalid_input", param=fields[0])
    svc = service()
    name = svc.resolve_model(model_field(body, "model"))
    keep = svc.keep_alive_field(body.get("keep_alive"))
    svc.load(name, keep)
    return name, texts, keep


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def collect(pieces: Iterable[Piece]) -> Tuple[str, DoneEvent]:
    """All text of a non-streamed answer; a runtime failure becomes a 500 JSON error instead of a reply."""
    text, done = "", None
    for piece in pieces:
        text += piece.text
        done = piece.done or done
    if done is None or done.finish_reason == "error":
        message = (done.error or {}).get("message", "generation failed") if done else "generation ended early"
        raise BridgeError(message, status=500, code="runtime_error")
    return text, done
