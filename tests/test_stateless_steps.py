"""The stateless `tcd_step` / `lcm_step` against diffusers' schedulers directly (not through the facade):
given diffusers' schedule and a step index, they produce diffusers' step in float64 (its float32
alphas_cumprod upcast exactly, the same noise), over schedules x prediction types x eta x step counts,
clipping and thresholding; and the facade's step is exactly the stateless function."""

import itertools

import numpy as np
import pytest

import fewstep
from fewstep.core.schedulers.lcm import LCMCoefficients, lcm_coefficients, lcm_step
from fewstep.core.schedulers.tcd import TCDCoefficients, tcd_coefficients, tcd_step
from tests.test_schedulers_vs_diffusers import _initial_sample, _model, _oracle, _rel
from tests.test_schedulers_vs_diffusers import float32_stream_noise  # noqa: F401  (a fixture)

pytestmark = pytest.mark.torch

CASES = list(itertools.product(("linear", "scaled_linear", "squaredcos_cap_v2"),
                               ("epsilon", "sample", "v_prediction"), (1, 4, 8)))
LCM_OPTIONS = ({}, {"clip_sample": True, "clip_sample_range": 0.5},
               {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5})


def _stateless_loop(step, reference, config, ref_kwargs=None, our_kwargs=None):
    """Run diffusers' scheduler and the stateless function side by side from diffusers' own schedule;
    every output within 1e-12 (relative to its magnitude) of diffusers' float64 step."""
    ref = reference
    timesteps = ref.timesteps.tolist()
    alphas = ref.alphas_cumprod.numpy()
    x_ours = x_ref = _initial_sample().double()
    g_ours, g_ref = fewstep.Generator(5), fewstep.Generator(5)
    for i, t in enumerate(timesteps):
        want = ref.step(_model(x_ref, t), t, x_ref, generator=g_ref, **(ref_kwargs or {}))
        got = step(_model(x_ours, t), t, x_ours, timesteps=timesteps, step_index=i, alphas_cumprod=alphas,
                   prediction_type=config["prediction_type"], generator=g_ours, **(our_kwargs or {}))
        for k in (0, 1):
            err = _rel(got[k], want[k], float(want[k].abs().max()))
            assert err <= 1e-12, (config, i, k, err)
        x_ours, x_ref = got[0], want.prev_sample


@pytest.mark.parametrize("schedule,prediction,steps", CASES)
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_tcd_step_matches_diffusers(float32_stream_noise, schedule, prediction, steps, eta):
    import diffusers

    config = dict(beta_schedule=schedule, prediction_type=prediction)
    ref = _oracle(diffusers.TCDScheduler, config)
    ref.set_timesteps(steps)
    _stateless_loop(tcd_step, ref, config, ref_kwargs={"eta": eta}, our_kwargs={"eta": eta})


@pytest.mark.parametrize("schedule,prediction,steps", CASES)
@pytest.mark.parametrize("options", LCM_OPTIONS, ids=["plain", "clip", "threshold"])
def test_lcm_step_matches_diffusers(float32_stream_noise, schedule, prediction, steps, options):
    import diffusers

    config = dict(beta_schedule=schedule, prediction_type=prediction, **options)
    ref = _oracle(diffusers.LCMScheduler, config)
    ref.set_timesteps(steps)
    _stateless_loop(lcm_step, ref, config, our_kwargs=options)


def test_facade_step_is_the_stateless_step():
    # The same inputs through TCDScheduler.step and tcd_step (and LCM likewise): bitwise equal, and the
    # coefficients the facade caches are the named tuples the stateless functions compute.
    x = fewstep.Generator(0).randn((1, 4, 8, 8))
    eps = fewstep.Generator(1).randn((1, 4, 8, 8))
    for cls, step, extra in ((fewstep.TCDScheduler, tcd_step, {"eta": 0.3}), (fewstep.LCMScheduler, lcm_step, {})):
        s = cls()
        s.set_timesteps(4)
        for i, t in enumerate(s.timesteps):
            a = s.step(eps, t, x, generator=fewstep.Generator(9), **extra)
            b = step(eps, t, x, timesteps=s.timesteps, step_index=i, alphas_cumprod=s.alphas_cumprod,
                     generator=fewstep.Generator(9), **extra)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert s._coefficient_cache and all(
            isinstance(c, (TCDCoefficients, LCMCoefficients)) for c in s._coefficient_cache.values())


def test_coefficients_are_named():
    alphas = fewstep.TCDScheduler().alphas_cumprod
    c = tcd_coefficients(alphas, 999, 759, 0.3)
    assert c.prev_xs ** 2 + c.prev_noise ** 2 == pytest.approx(1.0)
    last = tcd_coefficients(alphas, 259, 0, 0.3, add_noise=False)
    assert (last.prev_xs, last.prev_noise) == (1.0, 0.0)
    lcm = lcm_coefficients(alphas, 999, 759)
    assert lcm.denoised.model == pytest.approx(lcm.c_out * lcm.x0.model)
