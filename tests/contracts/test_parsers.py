"""Hypothesis tests of the parsers at the edges: Modelfiles, the native NDJSON stream as the exo client
reads it (chunk boundaries anywhere, UTF-8 characters split anywhere), image ``size`` strings."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_rk.client import BridgeClient, GenerationParams, StreamEnd, TokenEvent
from image_engine.modes import parse_size
from rkllama_bridge.modelfile import ModelfileError, parse_modelfile, render_modelfile

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
MF_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- Modelfile ---------------------------------------------------------------------------------------------

TYPED = {"NUM_CTX": st.integers(1, 10 ** 6), "MAX_NEW_TOKENS": st.integers(1, 10 ** 5),
         "TEMPERATURE": st.floats(0, 10, allow_nan=False), "TOP_K": st.integers(0, 1000),
         "TOP_P": st.floats(0.001, 1.0), "SYSTEM": MF_TEXT, "HUGGINGFACE_PATH": MF_TEXT}


@QUICK
@given(values=st.fixed_dictionaries({"FROM": MF_TEXT.filter(lambda s: s.strip() == s and s)},
                                    optional=TYPED),
       unknown=st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(
           lambda k: k not in TYPED and k != "FROM"), MF_TEXT.map(str.strip), max_size=3))
def test_rendered_modelfile_parses_back_to_its_values(values, unknown):
    text = render_modelfile({**values, **unknown})
    mf = parse_modelfile(text)
    for key, value in values.items():
        got = mf.get(key)
        assert got == value, (key, value, got)  # quoted values come back exactly, whitespace included
    assert sorted(unknown) == [k for k in mf.unknown_keys if k in unknown]


@pytest.mark.parametrize("value", ["x\\ny", "a\r\nb", "a\x85b", "a\u2028b"])
def test_values_with_backslashes_or_other_line_breaks_round_trip(value):
    assert parse_modelfile(render_modelfile({"FROM": "w.rkllm", "SYSTEM": value})).get("SYSTEM") == value


@QUICK
@given(text=st.text(max_size=300))
def test_any_text_parses_or_raises_a_modelfile_error(text):
    try:
        mf = parse_modelfile(text)
    except ModelfileError as exc:
        assert "Modelfile" in str(exc)
    else:
        assert "FROM" in mf.values


# --- native NDJSON stream, read by the exo client over a real socket -------------------------------------

TOKENS = st.lists(st.tuples(st.integers(0, 2 ** 31), st.text(max_size=4)), max_size=12)


async def _serve_chunks(payload: bytes, cuts: list) -> tuple:
    """An HTTP/1.1 server writing ``payload`` as chunked transfer encoding, one chunk per piece between
    ``cuts``; returns (server, url)."""
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True) if b > a]

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")  # the JSON body is left unread: only the answer matters
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_stream(payload: bytes, cuts: list) -> list:
    server, url = await _serve_chunks(payload, cuts)
    try:
        async with BridgeClient(url, stream_read_timeout=10) as client:
            return [event async for event in client.stream("m", [1, 2], GenerationParams())]
    finally:
        server.close()
        await server.wait_closed()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=TOKENS, data=st.data())
def test_stream_reader_gets_every_token_whatever_the_chunk_boundaries(tokens, data):
    lines = [json.dumps({"token_id": i, "text": t}, ensure_ascii=False) for i, t in tokens]
    lines.append(json.dumps({"done": True, "finish_reason": "stop", "usage": {"completion_tokens": len(tokens)}}))
    payload = ("\n".join(lines) + "\n").encode("utf-8")  # multi-byte characters: cuts may fall inside them
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=12))))
    events = asyncio.run(_read_stream(payload, cuts))
    assert events[:-1] == [TokenEvent(i, t) for i, t in tokens]
    assert events[-1] == StreamEnd("stop", {"completion_tokens": len(tokens)})


# --- image size strings -------------------------------------------------------------------------------------

@QUICK
@given(w=st.integers(1, 10 ** 6), h=st.integers(1, 10 ** 6), sep=st.sampled_from(["x", "X"]),
       pad=st.sampled_from(["", " ", "\t"]))
def test_size_strings_parse_to_their_numbers(w, h, sep, pad):
    assert parse_size(f"{pad}{w}{sep}{h}{pad}") == (w, h)


@QUICK
@given(text=st.one_of(st.text(max_size=12), st.from_regex(r"\s*-?[0-9²³١٢]{0,4}\s*[xX×]\s*-?[0-9²]{0,4}\s*",
                                                          fullmatch=True)))
def test_any_size_string_gives_positive_numbers_or_a_value_error(text):
    try:
        w, h = parse_size(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert w > 0 and h > 0


@pytest.mark.parametrize("value", [None, 512, 5.5, ["512x512"], {"w": 1}])
def test_a_size_that_is_not_a_string_is_a_value_error(value):
    with pytest.raises(ValueError):
        parse_size(value)
