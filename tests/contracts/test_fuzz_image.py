"""Schemathesis and hypothesis-driven bodies against a real ``image-engine serve`` (tiny LCM model)."""

from __future__ import annotations

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_engine.openapi import build_spec

from .conftest import IMAGE_TOKEN
from .fuzzing import error_shape_problem, examples_per_operation, fuzz_json_fields, fuzz_server


def test_generated_requests_get_no_500_and_match_the_document(image_server):
    report = fuzz_server(image_server.url, IMAGE_TOKEN)
    print(f"image fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])
    assert image_server.get_json("/health")[0] == 200, "the service stopped serving"


def test_hostile_json_fields_get_4xx_json_errors(image_server):
    known = {"size": st.sampled_from(["64x64", "64X64", " 64x64", "0x0", "64x64x64", "²x64", "99999999999x1"]),
             "mode": st.sampled_from(["tiny", "nope"]), "model": st.sampled_from(["tiny", None]),
             "num_inference_steps": st.integers(1, 3), "steps": st.integers(1, 3)}
    report = fuzz_json_fields(image_server.url, build_spec(), {}, IMAGE_TOKEN, known)
    print(f"image JSON fuzz: {report.summary()}")
    assert report.requests > 0
    assert not report.failures, "\n".join(report.failures[:20])


def test_every_route_but_health_needs_the_token(image_server):
    for path, ops in build_spec()["paths"].items():
        for method in ops:
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                r = requests.request(method, image_server.url + path, headers=auth, json={}, timeout=30)
                if path == "/health":
                    assert r.status_code == 200
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
                    assert r.json()["error"]["code"] == "unauthorized"


def test_inputs_that_once_gave_500_get_400(image_server):
    huge = b"1" + b"0" * 400  # 10**400: more than a float holds
    cases = [("/generate", b'{"prompt": "a\\udfffb"}'),
             ("/inference", b'{"uid": "\\ud800", "prompt": "x"}'),
             ("/inference", b'{"prompt": "x", "strength": ' + huge + b"}"),
             ("/v1/images/generations", b'{"prompt": "x", "guidance_scale": ' + huge + b"}")]
    for path, raw in cases:
        status, body = image_server.post_json(path, raw)
        assert status == 400, (path, status, body)
        assert body["error"]["code"] == "bad_input"


def _image_bytes(width: int, height: int, mode: str, fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = st.builds(_image_bytes, st.integers(1, 24), st.integers(1, 24), st.sampled_from(["RGB", "L", "RGBA"]),
                   st.sampled_from(["PNG", "BMP"]))
UPLOADS = st.one_of(IMAGES, IMAGES.map(lambda b: b[: len(b) // 2]), st.binary(max_size=64))


@settings(max_examples=2 * examples_per_operation(), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=UPLOADS, field=st.sampled_from(["file", "image", "file"]), filename=st.text(max_size=12),
       magnitude=st.sampled_from([None, "1", "2", "0", "x", "99"]))
def test_multipart_uploads_give_an_upscaled_image_or_a_4xx(image_server, data, field, filename, magnitude):
    form = {"magnitude": magnitude} if magnitude is not None else {}
    r = requests.post(image_server.url + "/superres", files={field: (filename or "f", data)}, data=form,
                      headers={"Authorization": f"Bearer {IMAGE_TOKEN}"}, timeout=60)
    problem = error_shape_problem(r)
    assert problem is None, problem
    if r.status_code == 200:
        assert r.headers["Content-Type"].startswith("image/")
        assert field == "file"
