"""The shared layer's pure pieces: numeric fields, stop lists, the chat request, request ids, finish reasons."""

from __future__ import annotations

import re

import pytest

from rk_common import openai_chat, request_ids
from rk_common.errors import BadRequest
from rk_common.validation import Number, decode_json, stop_list


@pytest.mark.parametrize("value, message", [
    (True, "must be a number"), ("1", "must be a number"), (float("inf"), "finite"), (float("nan"), "finite"),
    (-0.1, "must be in [0, 2]"), (2.01, "must be in [0, 2]"),
])
def test_a_number_outside_its_field_is_a_400_naming_the_field(value, message):
    with pytest.raises(BadRequest, match=re.escape(message)) as refused:
        Number(0, 2).check("temperature", value)
    assert refused.value.param == "temperature" and refused.value.code == "invalid_parameter"


def test_integer_fields_take_whole_floats_and_refuse_fractions():
    spec = Number(1, 10, integer=True, lo_open=False)
    assert spec.check("n", 3.0) == 3 and isinstance(spec.check("n", 3.0), int)
    with pytest.raises(BadRequest, match="an integer"):
        spec.check("n", 2.5)
    with pytest.raises(BadRequest, match=r"\(0, 1\]"):
        Number(0, 1, lo_open=True).check("top_p", 0)
    assert Number(0, 1, lo_open=True).schema() == {"type": "number", "minimum": 0, "maximum": 1,
                                                   "exclusiveMinimum": True}


def test_stop_lists_have_a_limit_and_no_empty_strings():
    assert stop_list("x", 4) == ["x"] and stop_list(None, 4) == []
    for bad in (["a"] * 5, [""], [1], {"a": 1}):
        with pytest.raises(BadRequest, match="up to 4"):
            stop_list(bad, 4)


def test_the_chat_request_is_checked_field_by_field():
    req = openai_chat.parse_chat_request({
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 3, "stop": "x", "stream": True, "stream_options": {"include_usage": True}})
    assert req.model is None and req.messages[0] == {"role": "system", "content": "hi"}
    assert req.max_tokens == 3 and req.stop == ("x",) and req.stream and req.include_usage
    for body, field in [({"messages": []}, "messages"), ({"max_tokens": 0}, "max_tokens"),
                        ({"messages": [{"role": "bot", "content": "a"}]}, "role"),
                        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "data URL"),
                        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "image_url"),
                        ({"stream": "yes"}, "stream"), ({"seed": 2**64}, "seed")]:
        with pytest.raises(BadRequest, match=field):
            openai_chat.parse_chat_request({"messages": [{"role": "user", "content": "a"}], **body})


def test_json_bodies_with_lone_surrogates_or_nothing_are_400s():
    assert decode_json(b'{"a": "\\ud83d\\ude42"}') == {"a": "\U0001f642"}  # a real pair is fine
    for raw, code in [(b"", "invalid_body"), (b"{", "invalid_json"), (b'{"a": "\\udfff"}', "invalid_json")]:
        with pytest.raises(BadRequest) as refused:
            decode_json(raw)
        assert refused.value.code == code


def test_request_ids_echo_plain_tokens_only():
    assert request_ids.request_id_for("abc-123_x.y") == "abc-123_x.y"
    for unsafe in (None, "", "a b", "x" * 129, "line\nbreak"):
        made = request_ids.request_id_for(unsafe)
        assert made != unsafe and len(made) == 32


def test_finish_reasons_follow_openai():
    assert [openai_chat.finish_reason(r) for r in ("stop", "length", "timeout", "abort", "error", None)] == [
        "stop", "length", "length", "stop", "error", "stop"]
