"""A bridge given by name is every address the name resolves to, re-resolved as DNS changes (the gateway
in front of a Kubernetes headless Service). Real bridges on two loopback addresses, one port; the look-up
itself is the one thing replaced, by a resolver the test controls."""

from __future__ import annotations

import logging
import socket

from exo_rk.backends import make_backend
from exo_rk.pool import BridgePool, is_name, member_url, resolve_host
from exo_rk.settings import Settings
from tests.pool.conftest import DECODE_TOK_S, QWEN, PoolBridge
from tests.pool.runs import generate
from tests.pool.test_pool_bridges import FAST_HEALTH, open_stream, poll
from tests.support import bridge_argv

NAME = "bridges.rk.test"


class BridgeAt(PoolBridge):
    """A sim bridge bound to ``host`` (any address of 127/8 is loopback on Linux)."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def test_names_and_member_urls():
    assert is_name("http://bridges:8080") and is_name("http://localhost:1")
    assert not is_name("http://10.0.0.7:8080") and not is_name("http://[fd00::7]:8080")
    assert member_url("http://bridges.rk.svc:8080", "10.1.2.3") == "http://10.1.2.3:8080"
    assert member_url("http://bridges.rk.svc:8080", "fd00::3") == "http://[fd00::3]:8080"


async def test_the_real_resolver_gives_each_address_once():
    addresses = await resolve_host("localhost", 8080)
    assert "127.0.0.1" in addresses and len(addresses) == len(set(addresses))
    assert await resolve_host("127.0.0.2", 8080) == ["127.0.0.2"]


def test_the_setting_makes_a_pool_of_one_name():
    settings = Settings.from_env({"RKLLM_SERVERS": f"{NAME}:8080", "RKLLM_POOL_RESOLVE_SECONDS": "10"})
    assert settings.resolve_interval == 10
    backend = make_backend(settings)
    assert isinstance(backend, BridgePool) and backend.resolve_interval == 10
    assert backend.bridges() == []  # looked up on first use, not at construction


async def test_a_name_becomes_its_addresses_as_dns_changes(pool_store, caplog):
    caplog.set_level(logging.INFO, logger="exo_rk.pool")
    argv = bridge_argv(pool_store, "sim", "--sim-profile", "instant", "--sim-decode-tok-s", DECODE_TOK_S,
                       "--log-level", "WARNING", "--preload", QWEN)
    first = BridgeAt("127.0.0.1", argv, startup_timeout=60).start()
    second = BridgeAt("127.0.0.2", [*argv, "--host", "127.0.0.2"], startup_timeout=60)
    second.port, second._log = first.port, open(second.log_path, "ab")
    answers = {NAME: ["127.0.0.1"]}
    lookups = []

    async def resolve(host: str, port: int):
        lookups.append((host, port))
        if answers.get(host) is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    pool = BridgePool([f"http://{NAME}:{first.port}"], resolve_interval=0.2, resolve=resolve, **FAST_HEALTH)
    held = []
    try:
        second.restart()
        assert (await generate(pool, QWEN, 5)).complete
        assert [b["url"] for b in pool.bridges()] == [first.url] and lookups[0] == (NAME, first.port)

        answers[NAME] = ["127.0.0.1", "127.0.0.2"]  # a second bridge pod became ready
        await poll(lambda: sorted(b["url"] for b in pool.bridges() if b["healthy"]) == [first.url, second.url],
                   what="the second address to join")
        held = [await open_stream(pool, QWEN), await open_stream(pool, QWEN)]
        await poll(lambda: (first.busy(), second.busy()) == (1, 1), what="one request on each bridge")
        for events in held:
            await events.aclose()
        held = []

        answers[NAME] = ["127.0.0.2"]  # the first pod went away
        await poll(lambda: [b["url"] for b in pool.bridges()] == [second.url], what="the first address to leave")
        run = await generate(pool, QWEN, 5)
        assert run.complete and pool.bridges()[0]["dispatched"] >= 2

        answers[NAME] = None  # DNS fails: the pool keeps what it had and keeps serving
        seen = len(lookups)
        await poll(lambda: len(lookups) >= seen + 2, what="two failed look-ups")
        assert [b["url"] for b in pool.bridges()] == [second.url]
        assert (await generate(pool, QWEN, 5)).complete
    finally:
        for events in held:
            await events.aclose()
        await pool.close()
        for bridge in (first, second):
            bridge.kill()
            bridge.stop()
    text = caplog.text
    assert f"{NAME}:{first.port} resolves to 2 bridges; added {second.url}" in text
    assert f"removed {first.url}" in text and f"cannot resolve http://{NAME}:{first.port}" in text
