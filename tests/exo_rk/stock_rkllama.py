"""A stock-rkllama-shaped server for the tests: it forwards to a real bridge every route a stock rkllama
has, and nothing of the native protocol (no ``/v1/generate``, no ``/v1/models/<name>``). ``/generate`` is
answered in one shot. Run: ``python stock_rkllama.py --upstream URL --port 0 --port-file F``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web

FORWARDED = {
    ("GET", "/"),
    ("GET", "/models"),
    ("POST", "/load_model"),
    ("POST", "/unload_model"),
    ("POST", "/generate"),
    ("GET", "/health"),
}


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def forward(request: web.Request) -> web.Response:
        if (request.method, request.path) not in FORWARDED:
            return web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html")
        body = await request.read()
        if request.path == "/generate":
            payload = json.loads(body)
            if payload.get("stream", True):
                return web.json_response({"error": "this test server answers stream=false only"}, status=400)
        async with aiohttp.ClientSession() as http:
            async with http.request(
                request.method,
                upstream + request.path,
                data=body or None,
                headers={"Content-Type": "application/json"},
            ) as resp:
                return web.Response(
                    status=resp.status, body=await resp.read(), content_type=resp.content_type
                )

    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(args) -> None:
    runner = web.AppRunner(make_app(args.upstream.rstrip("/")))
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    Path(args.port_file).write_text(str(port))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
