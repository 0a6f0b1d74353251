"""A module shaped as legacy exo's ``exo/api/chatgpt_api.py`` and ``exo/orchestration/node.py`` (commit
5f18faec1), written for these tests from what that code does, reduced to what the hook's patches touch:

- the same names and signatures: ``parse_chat_request(data, default_model)``,
  ``generate_completion(chat_request, tokenizer, prompt, request_id, tokens, stream, finish_reason,
  object_type)`` (looked up as a module global at call time), ``ChatGPTAPI(node,
  inference_engine_classname, response_timeout=90, on_chat_completion_request=None, default_model=None,
  system_prompt=None)`` with ``handle_post_chat_completions`` / ``handle_model_support`` bound as routes in
  ``__init__``, ``Node(..., max_generate_tokens=1024, default_sample_temperature=0.0)``;
- the same behaviour: ``max_tokens`` is not read; the node samples each result with ``temp=``, stops at
  ``tokenizer.eos_token_id`` or ``max_generate_tokens`` and publishes every token; the API decodes the
  tokens it got (EOS included), says ``stop`` when the last one is EOS and ``length`` otherwise, ends a
  stream with ``write_eof()`` and no ``[DONE]``; ``/modelpool`` streams the downloader's status per card.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict

from aiohttp import web

from exo_rk.compat import full_shard

model_cards: dict = {}


class ChatCompletionRequest:
    def __init__(self, model, messages, temperature, tools=None):
        self.model, self.messages, self.temperature, self.tools = model, messages, temperature, tools


def parse_chat_request(data: dict, default_model: str):
    return ChatCompletionRequest(data.get("model", default_model), list(data["messages"]),
                                 data.get("temperature", 0.0), data.get("tools"))


def generate_completion(chat_request, tokenizer, prompt, request_id, tokens, stream, finish_reason, object_type):
    key = "delta" if stream else "message"
    completion = {"id": f"chatcmpl-{request_id}", "object": object_type, "created": int(time.time()),
                  "model": chat_request.model,
                  "choices": [{"index": 0, key: {"role": "assistant", "content": tokenizer.decode(tokens)},
                               "logprobs": None, "finish_reason": finish_reason}]}
    if not stream:
        completion["usage"] = {"completion_tokens": len(tokens)}
    return completion


class Node:
    def __init__(self, _id, server, inference_engine, discovery, shard_downloader, partitioning_strategy=None,
                 max_generate_tokens: int = 1024, default_sample_temperature: float = 0.0, topology_viz=None):
        self.inference_engine = inference_engine
        self.shard_downloader = shard_downloader
        self.max_generate_tokens = max_generate_tokens
        self.default_sample_temperature = default_sample_temperature
        self.listeners: list = []

    def get_supported_inference_engines(self):
        return ["tinygrad"]

    async def select_best_inference_engine(self):
        self.inference_engine = "swapped for tinygrad"

    async def process_prompt(self, shard, prompt, request_id=None, inference_state=None):
        asyncio.create_task(self._generate(shard, prompt, request_id, inference_state or {}))

    async def _generate(self, shard, prompt, request_id, state):
        engine, tokens = self.inference_engine, []
        result, state = await engine.infer_prompt(request_id, shard, prompt, state)
        while True:
            token = await engine.sample(result, temp=self.default_sample_temperature)
            await engine.ensure_shard(shard)
            tokens.append(token.item())
            finished = token.item() == engine.tokenizer.eos_token_id or len(tokens) >= self.max_generate_tokens
            for listener in self.listeners:
                listener(request_id, [tokens[-1]], finished)
            if finished:
                return
            result, state = await engine.infer_tensor(request_id, shard, token.reshape(1, -1), state)


class ChatGPTAPI:
    def __init__(self, node, inference_engine_classname, response_timeout=90, on_chat_completion_request=None,
                 default_model=None, system_prompt=None):
        self.node = node
        self.inference_engine_classname = inference_engine_classname
        self.response_timeout = response_timeout
        self.on_chat_completion_request = on_chat_completion_request
        self.default_model = default_model
        self.token_queues = defaultdict(asyncio.Queue)
        node.listeners.append(lambda rid, toks, fin: self.token_queues[rid].put_nowait((toks, fin)))
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.handle_post_chat_completions)
        self.app.router.add_get("/modelpool", self.handle_model_support)

    async def handle_model_support(self, request):
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for model_id, status in self.node.shard_downloader.get_shard_download_status(
                self.inference_engine_classname):
            await response.write(f"data: {json.dumps({model_id: status})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def handle_post_chat_completions(self, request):
        data = await request.json()
        stream = data.get("stream", False)
        chat_request = parse_chat_request(data, self.default_model)
        if chat_request.model.startswith("gpt-") or chat_request.model not in model_cards:
            chat_request.model = self.default_model
        engine = self.node.inference_engine
        shard = full_shard(chat_request.model, model_cards[chat_request.model]["layers"])
        await engine.ensure_shard(shard)  # exo resolves the tokenizer of the card's repo here
        tokenizer = engine.tokenizer
        prompt = tokenizer.apply_chat_template(chat_request.messages, tokenize=False, add_generation_prompt=True)
        request_id = str(uuid.uuid4())
        if self.on_chat_completion_request:
            self.on_chat_completion_request(request_id, chat_request, prompt)
        await self.node.process_prompt(shard, prompt, request_id=request_id)
        if not stream:
            tokens = []
            while True:
                got, finished = await self.token_queues[request_id].get()
                tokens.extend(got)
                if finished:
                    break
            reason = "stop" if tokens[-1] == tokenizer.eos_token_id else "length"
            return web.json_response(generate_completion(chat_request, tokenizer, prompt, request_id, tokens,
                                                         stream, reason, "chat.completion"))
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            tokens, finished = await self.token_queues[request_id].get()
            reason = ("stop" if tokens[-1] == tokenizer.eos_token_id else "length") if finished else None
            chunk = generate_completion(chat_request, tokenizer, prompt, request_id, tokens, stream, reason,
                                        "chat.completion")
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if finished:
                break
        await response.write_eof()
        return response
