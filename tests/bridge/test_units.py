"""Parsers and pure pieces of the bridge: Modelfile, names, tokenizer, detokenizer, scheduler."""

import threading

import pytest

from rkllama_bridge.errors import BadRequest, ClientGone, QueueFull
from rkllama_bridge.modelfile import ModelfileError, parse_modelfile, render_modelfile
from rkllama_bridge.params import generation_params
from rkllama_bridge.scheduler import HandleQueue
from rkllama_bridge.store import validate_name
from rkllama_bridge.tokenizer import IncrementalDetokenizer

from ..support import wait_for


def test_modelfile_typed_values_and_unknown_keys_kept():
    mf = parse_modelfile('# comment\nFROM="m.rkllm"\nHUGGINGFACE_PATH="Qwen/Qwen2.5-1.5B-Instruct"\n'
                         'SYSTEM="You are \\"kind\\"."\nTEMPERATURE=0.6\nnum_ctx="4096"\nTOP_P=0.9\nFUTURE_KEY="x"\n')
    assert mf.get("FROM") == "m.rkllm" and mf.get("NUM_CTX") == 4096 and mf.get("TEMPERATURE") == 0.6
    assert mf.get("SYSTEM") == 'You are "kind".'
    assert mf.unknown_keys == ["FUTURE_KEY"] and mf.get("FUTURE_KEY") == "x"


def test_modelfile_round_trips_through_render():
    values = {"FROM": "a.rkllm", "SYSTEM": 'multi\nline "quoted"', "NUM_CTX": 512}
    mf = parse_modelfile(render_modelfile(values))
    assert mf.get("SYSTEM") == values["SYSTEM"] and mf.get("NUM_CTX") == 512


@pytest.mark.parametrize("text, fragment", [
    ('FROM="a"\nthis is not a key value line\n', ":2: expected KEY"),
    ('FROM="a"\nNUM_CTX="-5"\n', "NUM_CTX"),
    ('FROM="a"\nTOP_P=1.5\n', "TOP_P"),
    ('FROM="a"\nTEMPERATURE=hot\n', "TEMPERATURE"),
    ('SYSTEM="no weights"\n', "missing FROM"),
])
def test_modelfile_errors_name_the_line_or_key(text, fragment):
    with pytest.raises(ModelfileError, match=fragment.replace("(", r"\(")):
        parse_modelfile(text)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b", "na me", 7, None])
def test_model_names_cannot_be_paths(name):
    with pytest.raises(BadRequest):
        validate_name(name)


def test_model_names_allow_ollama_style_tags():
    assert validate_name("qwen2.5:3b-instruct_q8") == "qwen2.5:3b-instruct_q8"


def test_chat_template_matches_transformers(default_model_dir, default_tokenizer):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🦊"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
    ours = default_tokenizer.render_chat(conversation)
    theirs = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert default_tokenizer.encode(ours) == reference(theirs, add_special_tokens=False)["input_ids"]


def test_detokenizer_never_splits_multibyte_characters(default_tokenizer):
    text = " naïve 🦊 café 日本語 🥞"
    ids = default_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # some characters really are split over several tokens
    detok = IncrementalDetokenizer(default_tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == default_tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # held back while a character was incomplete


def test_detokenizer_drops_and_counts_out_of_vocab_ids(default_tokenizer):
    detok = IncrementalDetokenizer(default_tokenizer)
    ids = default_tokenizer.encode("hello world")
    out = [detok.push(ids[0]), detok.push(default_tokenizer.vocab_size + 783), detok.push(ids[1])]
    assert "".join(out) == "hello world" and detok.invalid_ids == 1
    assert default_tokenizer.decode(ids + [10**9]) == "hello world"


@pytest.mark.parametrize("fields, fragment", [
    ({"temperature": "hot"}, "'temperature' must be a number"),
    ({"max_new_tokens": -1}, "'max_new_tokens' must be in"),
    ({"max_new_tokens": 10**9}, "'max_new_tokens' must be in"),
    ({"max_new_tokens": 2.5}, "'max_new_tokens' must be an integer"),
    ({"top_p": 0}, "'top_p' must be in"),
    ({"top_k": True}, "'top_k' must be an integer"),
    ({"seed": "x"}, "'seed' must be an integer"),
])
def test_generation_params_reject_bad_values(fields, fragment):
    with pytest.raises(BadRequest, match=fragment):
        generation_params(fields, {}, 4096)


def test_generation_params_fall_back_to_modelfile_defaults():
    p = generation_params({"temperature": None, "top_k": 5}, {"TEMPERATURE": 0.3, "MAX_NEW_TOKENS": 77}, 4096)
    assert (p.temperature, p.top_k, p.max_new_tokens) == (0.3, 5, 77)


def test_handle_queue_is_fifo_and_bounded():
    q = HandleQueue(["h"], queue_max=2)
    held = q.acquire()
    order, started = [], []

    def waiter(tag):
        started.append(tag)
        h = q.acquire()
        order.append(tag)
        q.release(h)

    threads = []
    for tag in ("first", "second"):
        t = threading.Thread(target=waiter, args=(tag,))
        t.start()
        threads.append(t)
        wait_for(lambda: q.queued == len(threads), what="waiter queued")  # strict arrival order
    with pytest.raises(QueueFull) as exc:
        q.acquire()
    assert exc.value.status == 429 and exc.value.headers["Retry-After"]
    q.release(held)
    for t in threads:
        t.join(5)
    assert order == ["first", "second"]


def test_queued_request_leaves_when_client_is_gone():
    q = HandleQueue(["h"], queue_max=4)
    q.acquire()
    gone = threading.Event()
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(ClientGone, q.acquire, gone.is_set)))
    t.start()
    wait_for(lambda: q.queued == 1, what="request queued")
    gone.set()
    t.join(5)
    assert not t.is_alive() and q.queued == 0
