"""A stock rkllama server for the tests, written from the behaviour of the two rkllama forks.

Its own process (aiohttp), no runtime: the reply is a deterministic list of words chosen from the
conversation, one word per "token" and per chunk, so a test can compute what the server sent
(:func:`reply_words`). The routes and their shapes follow the forks' Flask servers:

* NotPunchnox/rkllama 0.0.74: ``/api/version``, ``/api/tags``, ``/models``, ``/current_models`` (and
  ``/api/ps``), ``/load_model`` (several models; loading a loaded one answers 200 with an ``error`` field
  "A model is already loaded. Nothing to do."), ``/unload_model``, ``/api/chat`` (NDJSON),
  ``/v1/chat/completions`` (SSE, a usage chunk with ``choices: []`` before ``[DONE]``), ``/generate``, and
  ``/api/embed``, ``/api/embeddings``, ``/v1/embeddings`` (one handler: ``input`` or ``prompt``, the model
  loaded on demand, Ollama's ``{"embeddings": [...]}`` on both Ollama routes; the OpenAI route answers ONE
  data item whose ``embedding`` is every input's vector concatenated, as 0.0.74's converter does). The
  vectors are :func:`embedding_of` the text.
* jfreed-dev/rkllama (the original rkllama API): ``/models``, ``/current_model``, ``/load_model`` with one
  model at a time, ``/unload_model``, ``/generate`` only.

``/generate`` answers the original rkllama shape: ``text/plain`` JSON chunks separated by blank lines,
``{"id", "object": "rkllm_chat", "created", "choices": [{"role", "content", "logprobs", "finish_reason"}],
"usage": {"prompt_tokens", "completion_tokens", "tokens_per_second", "total_tokens"}}``, ``finish_reason``
null until the last chunk.

Quirks are switches (see ``main``). Every generation is appended to ``--record`` (route and messages as
received) for the tests to read.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from aiohttp import web

WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "juniper", "kelp",
         "lagoon", "meadow", "nectar", "orchid", "prairie", "quartz", "river", "summit", "tundra", "umber",
         "valley", "willow", "yarrow", "zephyr")
ALTERNATE = "Roles must alternate between 'user' and 'assistant'."
OWN_SYSTEM = "You are a helpful assistant running on rkllama."


def reply_words(messages: List[Dict[str, Any]], n: int) -> List[str]:
    """The ``n`` pieces the server answers ``messages`` with (as received, before any quirk)."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    words = [WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(n)]
    return [words[0].capitalize()] + [" " + w for w in words[1:]]


EMBEDDING_DIM = 8


def embedding_of(text: str) -> List[float]:
    """The vector the server answers for ``text`` (rkllama takes the last token's hidden state)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:EMBEDDING_DIM]]


def prompt_count(messages: List[Dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) + 3 for m in messages) + 1


def now_iso() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StockServer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.models = [m for m in args.models.split(",") if m]
        self.loaded: List[str] = [args.preload] if args.preload else []
        self.leftover: List[str] = []  # the tail a previous reply lost (leaked into the next one)
        self.record = Path(args.record) if args.record else None

    # -- the model state -------------------------------------------------------------------------

    def _load(self, name: str) -> Optional[web.Response]:
        if name not in self.models:
            return web.json_response({"error": f"Model directory '{name}' not found."}, status=400)
        if self.args.single_model:
            if self.loaded:
                return web.json_response({"error": "A model is already loaded. Please unload it first."},
                                         status=400)
        elif name in self.loaded:
            return web.json_response({"error": "A model is already loaded. Nothing to do."})
        self.loaded.append(name)
        return None

    async def load_model(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("model_name")
        if not name:
            return web.json_response({"error": "Please enter the name of the model to be loaded."}, status=400)
        return self._load(name) or web.json_response({"message": f"Model {name} loaded successfully."})

    async def unload_model(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("model_name") or (self.loaded[0] if self.args.single_model and self.loaded else None)
        if name not in self.loaded:
            return web.json_response({"error": f"No model {name} are currently loaded."}, status=400)
        self.loaded.remove(name)
        return web.json_response({"message": f"Model {name} successfully unloaded!"})

    async def current_model(self, request: web.Request) -> web.Response:
        if not self.loaded:
            return web.json_response({"error": "No models are currently loaded."}, status=404)
        return web.json_response({"model_name": self.loaded[0]})

    async def current_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "size": 0, "details": {"format": "rkllm"}}
                                             for m in self.loaded]})

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.models})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "size": 0, "digest": "",
                                              "details": {"format": "rkllm"}} for m in self.models]})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.74"})

    async def quirks(self, request: web.Request) -> web.Response:
        """The double's own control route (no rkllama has it): replace the quirks with the given
        switches (argparse names, the rest back to their defaults) and reset the loaded models."""
        given = await request.json()
        try:
            self.args = parser().parse_args(["--port-file", self.args.port_file, *given.get("argv", [])])
        except SystemExit:
            return web.json_response({"error": f"bad switches {given!r}"}, status=400)
        self.models = [m for m in self.args.models.split(",") if m]
        self.loaded = [self.args.preload] if self.args.preload else []
        self.leftover = []
        self.record = Path(self.args.record) if self.args.record else None
        return web.json_response({"quirks": vars(self.args)})

    async def root(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "Welcome to RKLLama with Ollama API compatibility!"})

    def _load_on_demand(self, name: str) -> Optional[web.Response]:
        """rkllama loads a model a request names when it is not loaded; a refused load is its 500."""
        if name not in self.loaded and self._load(name) is not None:
            return web.json_response({"error": f"Failed to load model '{name}'"}, status=500)
        return None

    async def embeddings(self, request: web.Request) -> web.Response:
        data = await request.json()
        name, given = data.get("model"), data.get("input", data.get("prompt"))
        if not name:
            return web.json_response({"error": "Missing model name"}, status=400)
        if not given:
            return web.json_response({"error": "Missing input"}, status=400)
        refused = self._load_on_demand(name)
        if refused is not None:
            return refused
        texts = given if isinstance(given, list) else [given]
        vectors = [embedding_of(str(t)) for t in texts]
        tokens = sum(len(str(t).split()) for t in texts)
        if not request.path.startswith("/v1/"):
            return web.json_response({"model": name, "embeddings": vectors, "total_duration": 1000,
                                      "load_duration": 0, "prompt_eval_count": tokens})
        return web.json_response({"object": "list", "model": name, "usage": {"prompt_tokens": tokens,
                                                                             "total_tokens": tokens},
                                  "data": [{"object": "embedding", "index": 0,
                                            "embedding": [x for v in vectors for x in v]}]})

    # -- generation -----------------------------------------------------------------------------

    def _conversation(self, route: str, messages: List[Dict[str, Any]], stream: Any = None) -> List[Dict[str, Any]]:
        """The conversation as the server templates it; raises ValueError as the forks do."""
        if self.record is not None:
            with self.record.open("a") as out:
                out.write(json.dumps({"route": route, "messages": messages, "stream": stream}) + "\n")
        prompt = list(messages)
        if self.args.refuse_system:
            prompt = [{"role": "system", "content": OWN_SYSTEM}] + prompt
        for before, after in zip(prompt, prompt[1:], strict=False):
            if before["role"] == after["role"]:
                raise ValueError(ALTERNATE)
        return prompt

    def _pieces(self, messages: List[Dict[str, Any]]) -> tuple:
        """(pieces sent, pieces counted): the tail quirk drops the last ones (and leaks them into the next
        reply with ``--tail-leak``); the count stays the model's."""
        pieces = reply_words(messages, self.args.reply_words)
        counted = len(pieces)
        if self.leftover:  # the lost tail comes out first; this reply is sent whole
            sent, self.leftover = self.leftover + pieces, []
            return sent, counted
        if self.args.tail_loss:
            sent, lost = pieces[:-self.args.tail_loss], pieces[-self.args.tail_loss:]
            self.leftover = lost if self.args.tail_leak else []
            return sent, counted
        return pieces, counted

    async def _paced(self, pieces: List[str]):
        await asyncio.sleep(self.args.ttft)
        for i, piece in enumerate(pieces):
            if i and self.args.token_interval:
                await asyncio.sleep(self.args.token_interval)
            yield piece

    def _refusal(self, exc: ValueError) -> web.Response:
        # Flask's default for an exception the route lets escape: a 500 page; some versions wrap it as JSON.
        return web.json_response({"error": str(exc)}, status=500)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if self.args.generate_500:
            return web.Response(status=500, text="<h1>Internal Server Error</h1>", content_type="text/html")
        if not self.loaded:
            return web.json_response({"error": "No models are currently loaded."}, status=400)
        data = await request.json()
        try:
            prompt = self._conversation("/generate", data["messages"], data.get("stream"))
        except ValueError as exc:
            return self._refusal(exc)
        pieces, counted = self._pieces(data["messages"])
        n_prompt = prompt_count(prompt)
        start = time.monotonic()
        body = {"id": "rkllm_chat", "object": "rkllm_chat", "created": int(time.time()), "choices": [],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": 0, "tokens_per_second": 0,
                          "total_tokens": n_prompt}}
        if not data.get("stream"):
            text = "".join([p async for p in self._paced(pieces)])
            elapsed = max(time.monotonic() - start, 1e-6)
            body["choices"] = [{"role": "assistant", "content": text, "logprobs": None, "finish_reason": "stop"}]
            body["usage"].update(completion_tokens=counted, total_tokens=n_prompt + counted,
                                 tokens_per_second=round(counted / elapsed, 2))
            return web.json_response(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        count = 0
        async for piece in self._paced(pieces):
            count += 1
            if self.args.chunk_ids:
                body["id"] = f"rkllm_chat_{uuid.uuid4().hex[:8]}"
            body["choices"] = [{"role": "assistant", "content": piece, "logprobs": None, "finish_reason": None}]
            body["usage"].update(completion_tokens=count, total_tokens=n_prompt + count)
            await resp.write((json.dumps(body) + "\n\n").encode())
        elapsed = max(time.monotonic() - start, 1e-6)
        body["choices"] = [{"role": "assistant", "content": "", "logprobs": None, "finish_reason": "stop"}]
        body["usage"].update(completion_tokens=counted, total_tokens=n_prompt + counted,
                             tokens_per_second=round(counted / elapsed, 2))
        await resp.write((json.dumps(body) + "\n\n").encode())
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        openai = request.path.startswith("/v1/")
        data = await request.json()
        model = data.get("model")
        if not model:
            return web.json_response({"error": "Missing model name"}, status=400)
        refused = self._load_on_demand(model)
        if refused is not None:
            return refused
        try:
            prompt = self._conversation(request.path, data.get("messages") or [], data.get("stream"))
        except ValueError as exc:
            return self._refusal(exc)
        pieces, counted = self._pieces(data.get("messages") or [])
        n_prompt = prompt_count(prompt)
        start = time.monotonic()
        if not data.get("stream", not openai):
            text = "".join([p async for p in self._paced(pieces)])
            eval_ns = int(max(time.monotonic() - start, 1e-6) * 1e9)
            if openai:
                return web.json_response({
                    "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": counted,
                              "total_tokens": n_prompt + counted}})
            return web.json_response({"model": model, "created_at": now_iso(),
                                      "message": {"role": "assistant", "content": text}, "done_reason": "stop",
                                      "done": True, "prompt_eval_count": n_prompt, "eval_count": counted,
                                      "eval_duration": eval_ns})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if openai
                                           else "application/x-ndjson"})
        await resp.prepare(request)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        async def send(chunk: Dict[str, Any]) -> None:
            await resp.write((f"data: {json.dumps(chunk)}\n\n" if openai else json.dumps(chunk) + "\n").encode())

        async for piece in self._paced(pieces):
            if openai:
                await send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": {"content": piece, "role": "assistant"},
                                         "finish_reason": None}]})
            else:
                await send({"model": model, "created_at": now_iso(),
                            "message": {"role": "assistant", "content": piece}, "done": False})
        eval_s = max(time.monotonic() - start, 1e-6)
        if openai:
            await send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]})
            await send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": counted,
                                                 "total_tokens": n_prompt + counted,
                                                 "tokens_per_second": round(counted / eval_s, 2)}})
            await resp.write(b"data: [DONE]\n\n")
        else:
            await send({"model": model, "created_at": now_iso(), "message": {"role": "assistant", "content": ""},
                        "done": True, "done_reason": "stop", "prompt_eval_count": n_prompt, "eval_count": counted,
                        "eval_duration": int(eval_s * 1e9)})
        await resp.write_eof()
        return resp


PUNCHNOX_ONLY = {"/current_models", "/api/ps", "/api/version", "/api/tags", "/api/embed", "/api/embeddings",
                 "/v1/embeddings"}
CHAT_ROUTES = {"/api/chat", "/v1/chat/completions"}


def make_app(args: argparse.Namespace) -> web.Application:
    server = StockServer(args)

    def has(path: str) -> bool:
        """Whether the fork the server currently plays has ``path`` (the quirks may change at run time)."""
        fork = server.args.fork
        if path == "/current_model":
            return fork == "jfreed"
        if path in PUNCHNOX_ONLY:
            return fork == "punchnox"
        if path in CHAT_ROUTES:
            return fork == "punchnox" and not server.args.no_chat_routes
        return True

    def route(handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not has(request.path):
                return web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html")
            return await handler(request)
        return guarded

    app = web.Application()
    for method, path, handler in (
            ("GET", "/", server.root), ("POST", "/_double/quirks", server.quirks),
            ("GET", "/models", server.list_models), ("POST", "/load_model", server.load_model),
            ("POST", "/unload_model", server.unload_model), ("POST", "/generate", server.generate),
            ("GET", "/current_model", server.current_model), ("GET", "/current_models", server.current_models),
            ("GET", "/api/ps", server.current_models), ("GET", "/api/version", server.version),
            ("GET", "/api/tags", server.tags), ("POST", "/api/chat", server.chat),
            ("POST", "/v1/chat/completions", server.chat), ("POST", "/api/embed", server.embeddings),
            ("POST", "/api/embeddings", server.embeddings), ("POST", "/v1/embeddings", server.embeddings)):
        app.router.add_route(method, path, route(handler))
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args))
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    Path(args.port_file).write_text(str(port))
    await asyncio.Event().wait()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--fork", choices=("punchnox", "jfreed"), default="punchnox",
                   help="which fork's routes: punchnox (0.0.74) or jfreed (the original API, /generate only)")
    p.add_argument("--models", default="qwen-sim", help="models in the store, comma-separated")
    p.add_argument("--preload", default=None, help="a model already loaded when the server starts")
    p.add_argument("--single-model", action="store_true",
                   help="one model at a time: any /load_model while one is loaded answers 400")
    p.add_argument("--generate-500", action="store_true", help="/generate answers 500 (rkllama 0.0.74's bug)")
    p.add_argument("--refuse-system", action="store_true",
                   help="prepend the server's own system prompt; a request with a system message fails (500)")
    p.add_argument("--chunk-ids", action="store_true", help="a new id in every /generate chunk")
    p.add_argument("--no-chat-routes", action="store_true", help="punchnox without /api/chat and /v1/...")
    p.add_argument("--tail-loss", type=int, default=0, help="the last N pieces of each reply are not sent")
    p.add_argument("--tail-leak", action="store_true", help="... and start the next reply (sent whole) instead")
    p.add_argument("--reply-words", type=int, default=16)
    p.add_argument("--ttft", type=float, default=0.0, help="seconds before the first piece")
    p.add_argument("--token-interval", type=float, default=0.0, help="seconds between pieces")
    p.add_argument("--record", default=None, help="append every generation's route and messages here")
    return p


def main() -> None:
    asyncio.run(serve(parser().parse_args()))


if __name__ == "__main__":
    main()
