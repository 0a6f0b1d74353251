"""The numpy LCM scheduler against known numbers and, when installed, diffusers' LCMScheduler."""

import numpy as np
import pytest

from image_engine.lcm import LCMConfig, LCMScheduler, guidance_embedding


def test_four_steps_give_the_lcm_timesteps():
    assert LCMScheduler().timesteps(4).tolist() == [999, 759, 499, 259]


def test_step_counts_pick_evenly_from_the_fifty_step_skeleton():
    s = LCMScheduler()
    assert s.timesteps(1).tolist() == [999]
    assert s.timesteps(2).tolist() == [999, 499]
    assert s.timesteps(8).tolist() == [999, 879, 759, 639, 499, 379, 259, 139]
    assert s.timesteps(50).tolist() == list(range(999, 0, -20))


@pytest.mark.parametrize("steps", [0, -1, 51])
def test_step_counts_outside_the_skeleton_are_refused(steps):
    with pytest.raises(ValueError, match="between 1 and 50"):
        LCMScheduler().timesteps(steps)


def test_alphas_cumprod_at_the_four_step_timesteps():
    # Product of (1 - beta) over the scaled_linear SD schedule, computed here in float64 from its definition.
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    expected = np.cumprod(1 - betas)[[999, 759, 499, 259]]
    got = LCMScheduler().alphas_cumprod[[999, 759, 499, 259]]
    np.testing.assert_allclose(got, expected, rtol=2e-5)
    np.testing.assert_allclose(got, [0.00466, 0.05224, 0.27767, 0.65901], atol=5e-5)


def test_boundary_scalings_make_the_last_step_nearly_the_prediction():
    s = LCMScheduler()
    c_skip, c_out = s.scalings(999)
    assert c_skip == pytest.approx(0.25 / (9990.0 ** 2 + 0.25))
    assert c_out == pytest.approx(9990.0 / np.sqrt(9990.0 ** 2 + 0.25))
    assert s.scalings(0) == (1.0, 0.0)


def test_guidance_embedding_shape_and_values():
    emb = guidance_embedding(8.0, 256)
    assert emb.shape == (1, 256) and emb.dtype == np.float32
    w = 7000.0
    freq = np.exp(-np.log(10000.0) * np.arange(128) / 127)
    np.testing.assert_allclose(emb[0, :128], np.sin(w * freq), atol=2e-3)
    np.testing.assert_allclose(emb[0, 128:], np.cos(w * freq), atol=2e-3)
    # guidance 1.0 means w = 0: sin part zero, cos part one.
    zero = guidance_embedding(1.0, 256)
    assert np.all(zero[0, :128] == 0) and np.all(zero[0, 128:] == 1)


def test_last_step_returns_the_denoised_sample_and_earlier_steps_need_noise():
    s = LCMScheduler()
    ts = s.timesteps(2)
    x = np.ones((1, 4, 2, 2), np.float32)
    eps = np.full_like(x, 0.5)
    with pytest.raises(ValueError, match="noise"):
        s.step(eps, ts, 0, x, None)
    nxt, den = s.step(eps, ts, 1, x, None)
    assert nxt is den
    a = s.alphas_cumprod[499]
    c_skip, c_out = s.scalings(499)
    x0 = (1 - np.sqrt(1 - a) * 0.5) / np.sqrt(a)
    np.testing.assert_allclose(den, c_out * x0 + c_skip * 1.0, rtol=1e-5)


def test_config_reads_a_scheduler_json_and_ignores_unknown_keys(tmp_path):
    p = tmp_path / "scheduler_config.json"
    p.write_text('{"_class_name": "LCMScheduler", "original_inference_steps": 25, "beta_end": 0.012,'
                 ' "trained_betas": null, "steps_offset": 1}')
    cfg = LCMConfig.from_json(p)
    assert cfg.original_inference_steps == 25
    assert LCMScheduler(cfg).timesteps(4).tolist() == [999, 759, 519, 279]


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed (pip install '.[test]')")


@pytest.mark.parametrize("steps", [1, 2, 4, 6, 8])
def test_equals_diffusers_lcm_scheduler_step_by_step(steps):
    diffusers = _diffusers()
    torch = pytest.importorskip("torch")
    ref = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 original_inference_steps=50, set_alpha_to_one=True, steps_offset=1)
    ref.set_timesteps(steps)
    ours = LCMScheduler()
    ts = ours.timesteps(steps)
    assert ts.tolist() == ref.timesteps.tolist()
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5)

    rng = np.random.RandomState(7)
    sample = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ref_sample = torch.from_numpy(sample.copy())
    gen = torch.Generator().manual_seed(11)
    twin = torch.Generator().manual_seed(11)
    for i, t in enumerate(ts):
        eps = rng.standard_normal(sample.shape).astype(np.float32)
        # diffusers draws its noise from the generator after computing denoised; draw the same numbers.
        noise = None if i == len(ts) - 1 else torch.randn(sample.shape, generator=twin).numpy()
        ref_next, ref_den = ref.step(torch.from_numpy(eps), int(t), ref_sample, generator=gen,
                                     return_dict=False)
        sample, den = ours.step(eps, ts, i, sample, noise)
        np.testing.assert_allclose(den, ref_den.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sample, ref_next.numpy(), rtol=1e-4, atol=1e-5)
        ref_sample = ref_next


def test_guidance_embedding_equals_diffusers():
    _diffusers()
    torch = pytest.importorskip("torch")
    from diffusers import LatentConsistencyModelPipeline

    for g in (1.0, 1.5, 4.0, 8.5):
        ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, torch.tensor([g - 1.0]), embedding_dim=256)
        np.testing.assert_allclose(guidance_embedding(g, 256), ref.numpy(), atol=1e-3)
