"""The LCM pipeline over the tiny model: determinism, progress, cancellation, sizes."""


import numpy as np
import pytest

from image_engine.errors import BadInput, Cancelled
from image_engine.pipeline import GenerateParams, LCMPipeline, encode_image
from image_engine.workers import CancelToken


def params(**kw):
    base = {"prompt": "a cinematic forest at sunrise", "width": 64, "height": 64, "steps": 4, "guidance": 1.0,
            "seed": 1234}
    base.update(kw)
    return GenerateParams(**base)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return LCMPipeline.load(tiny_model, backend="onnxruntime")


def test_same_seed_gives_identical_png_bytes_and_other_seeds_differ(pipe, tiny_model):
    first = encode_image(pipe.generate(params()).image)
    again = encode_image(pipe.generate(params()).image)
    fresh = encode_image(LCMPipeline.load(tiny_model, backend="onnxruntime").generate(params()).image)
    other = encode_image(pipe.generate(params(seed=1235)).image)
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == again == fresh
    assert first != other


def test_prompt_steps_and_guidance_all_change_the_image(pipe):
    base = pipe.generate(params()).image
    for change in ({"prompt": "a city at sunset"}, {"steps": 2}, {"guidance": 8.0}):
        assert not np.array_equal(base, pipe.generate(params(**change)).image), change


def test_image_has_the_requested_shape_and_range(pipe):
    image = pipe.generate(params()).image
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01


def test_progress_is_reported_once_per_step_with_lcm_timesteps(pipe):
    events = []
    gen = pipe.generate(params(), on_step=events.append)
    assert [(e.step, e.total_steps, e.timestep) for e in events] == [(1, 4, 999), (2, 4, 759), (3, 4, 499),
                                                                      (4, 4, 259)]
    assert set(gen.model_seconds) == {"text_encoder", "unet", "vae_decoder"}


def test_cancellation_stops_between_steps(pipe):
    token = CancelToken()
    seen = []

    def on_step(event):
        seen.append(event.step)
        if event.step == 2:
            token.cancel("client went away")

    with pytest.raises(Cancelled, match="client went away"):
        pipe.generate(params(steps=6), on_step=on_step, token=token)
    assert seen == [1, 2]


def test_fixed_shape_model_refuses_other_sizes_naming_the_supported_one(pipe):
    assert pipe.sizes() == [(64, 64)]
    with pytest.raises(BadInput, match="built for 64x64 only"):
        pipe.generate(params(width=128, height=128))


@pytest.mark.parametrize("steps", [0, 51])
def test_step_counts_out_of_range_are_bad_input(pipe, steps):
    with pytest.raises(BadInput, match="between 1 and 50"):
        pipe.generate(params(steps=steps))
