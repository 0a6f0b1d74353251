"""CPU-heavy request work on the gateway, off its event loop.

Parsing a multi-megabyte JSON body, templating a long conversation and tokenizing it take seconds of CPU;
on the event loop they would freeze every other stream. They run on a small pool of worker threads
(``CPU_WORKERS``: a burst of huge requests queues there instead of multiplying memory). The Rust tokenizer
releases the interpreter lock while it works, so the event loop keeps serving other streams meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from aiohttp import web

from rk_common.validation import decode_json

CPU_WORKERS = 2
OFFLOAD_BYTES = 64 * 1024  # smaller bodies parse in well under a millisecond: not worth a thread hop
WORKERS_KEY = web.AppKey("cpu_workers", ThreadPoolExecutor)

T = TypeVar("T")


def install_workers(app: web.Application) -> None:
    """Give ``app`` its worker threads, shut down with the app."""
    app[WORKERS_KEY] = ThreadPoolExecutor(CPU_WORKERS, thread_name_prefix="gateway-cpu")

    async def shutdown(_app: web.Application) -> None:
        app[WORKERS_KEY].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)


async def run_cpu(app: web.Application, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the app's worker threads."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(app[WORKERS_KEY], call)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, decoded as every server decodes one (``rk_common.validation``); a large
    one on a worker thread. A body over the app's size limit raises aiohttp's 413."""
    raw = await request.read()
    if len(raw) <= OFFLOAD_BYTES:
        return decode_json(raw)
    return await run_cpu(request.app, decode_json, raw)
