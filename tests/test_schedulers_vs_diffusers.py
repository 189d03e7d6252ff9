"""fewstep's TCDScheduler / LCMScheduler against the installed diffusers, over a grid of configs.

How numbers are compared (one place, so every bound below has the same meaning):

* Timesteps: identical int64 arrays, or both raise (fewstep always ValueError).
* float64 loops: fewstep on float64 tensors against diffusers' own step code run in float64 (its
  float32 alphas_cumprod upcast exactly, so every scalar is formed in float64 too) with the same noise.
  Same maths, same precision: any algorithmic difference would show far above the 1e-12 bound.
* float32 loops (the real use, on torch tensors, both drawing from a torch.Generator): each step gets
  diffusers' sample as input (teacher forcing) and is compared with diffusers' float32 step and with
  the float64 evaluation of diffusers' maths ("oracle"). fewstep forms its coefficients in float64, so
  it stays within 1e-6 of the oracle; diffusers forms them in float32 and in places (e.g.
  1 - a_prev/a_s near t = 0 of the cosine schedule) is itself up to ~6e-6 off. Hence
      |fewstep - oracle| <= 1e-6 * scale
      |fewstep - diffusers| <= 1e-6 * scale + |diffusers - oracle|,
  scale = max(max|oracle output|, max|input sample|) (max norms over the tensor).
  The free-running float32 trajectories are compared too, with the bound given at that assert.
"""

import itertools
import json
import os

import numpy as np
import pytest

import fewstep
from fewstep.core import schedules

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
ETAS = (0.0, 0.1, 0.3, 0.5, 1.0)
STEPS = (1, 2, 4, 8, 26, 50)
STRENGTHS = (1.0, 0.75, 0.5, 0.3)
ORIGINAL_STEPS = (None, 50)  # implicit (config value) and explicit (TCD: full 0..T-1 range)
CUSTOM_LISTS = ([999, 759, 499, 259], [999, 879, 500, 100, 7], [700, 300], [999, 500, 90, 0])
SHAPE = (2, 4, 8, 8)


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _quiet_custom_timestep_warnings():
    """The grid passes off-grid custom timesteps on purpose; both libraries warn about each one."""
    import logging

    loggers = [logging.getLogger(name) for name in ("fewstep", "diffusers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def _torch():
    import torch

    return torch


def _classes(kind):
    import diffusers

    return (fewstep.TCDScheduler, diffusers.TCDScheduler) if kind == "tcd" else (fewstep.LCMScheduler, diffusers.LCMScheduler)


def _model(x, t):
    """A smooth stand-in UNet (Lipschitz <= 1, timestep-dependent) that works on any tensor type."""
    torch = _torch()
    return torch.tanh(x) * 0.9 + 0.1 * float(np.cos(float(t) / 50.0))


def _initial_sample():
    torch = _torch()
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234))


@pytest.fixture
def float32_stream_noise(monkeypatch):
    """Let diffusers' schedulers draw from a fewstep.Generator (float64 runs), and from a torch.Generator
    as randn_tensor does on the CPU (float32 runs, unchanged; float64 oracles get the float32 stream)."""
    torch = _torch()
    from diffusers.schedulers import scheduling_lcm, scheduling_tcd

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if isinstance(generator, fewstep.Generator):  # the float64 runs: the same draw fewstep makes
            return torch.from_numpy(generator.randn(tuple(shape), dtype=str(dtype).split(".")[-1])).to(dtype)
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(dtype)

    monkeypatch.setattr(scheduling_tcd, "randn_tensor", randn_tensor)
    monkeypatch.setattr(scheduling_lcm, "randn_tensor", randn_tensor)


def _oracle(ref_cls, config, table=None):
    """diffusers' scheduler computing in float64: its own float32 table upcast exactly (or `table`)."""
    torch = _torch()
    oracle = ref_cls(**config)
    source = oracle.alphas_cumprod.numpy() if table is None else table
    oracle.alphas_cumprod = torch.from_numpy(np.asarray(source, dtype=np.float32).astype(np.float64))
    return oracle


def _set_both(ours, ref, **kwargs):
    """set_timesteps on both; returns the diffusers exception (fewstep must then raise ValueError)."""
    try:
        ref.set_timesteps(**kwargs)
    except Exception as err:  # diffusers raises ValueError, IndexError, ZeroDivisionError, ...
        with pytest.raises(ValueError):
            ours.set_timesteps(**kwargs)
        return err
    if len(ref.timesteps) == 0:
        # Deliberate difference: strength so small that no custom timestep is kept gives diffusers an
        # empty schedule (a loop that does nothing); fewstep raises ValueError naming the fix.
        with pytest.raises(ValueError, match="strength"):
            ours.set_timesteps(**kwargs)
        return "empty"
    ours.set_timesteps(**kwargs)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    return None


def _rel(a, b, scale):
    return float((a.double() - b.double()).abs().max()) / scale


class _Failures(list):
    def check(self, ok, *what):
        if not ok:
            self.append(what)

    def assert_none(self):
        assert not self, f"{len(self)} mismatches, first ones: {self[:5]}"


def _run_float32(kind, config, set_kwargs, step_kwargs, failures, table=None, p7=False):
    """Teacher-forced float32 comparison along diffusers' trajectory + fewstep's own free run."""
    torch = _torch()
    ours_cls, ref_cls = _classes(kind)
    ours, ref = ours_cls(**config), ref_cls(**config)
    if table is not None:
        ref.alphas_cumprod = torch.from_numpy(np.asarray(table, dtype=np.float32))
    if _set_both(ours, ref, **set_kwargs) is not None:
        return
    oracle = _oracle(ref_cls, config, table)
    oracle.set_timesteps(**set_kwargs)
    free = ours_cls(**config)
    free.set_timesteps(**set_kwargs)
    gens = [torch.Generator().manual_seed(7) for _ in range(4)]
    x_ref = x_free = _initial_sample()
    last = len(ref.timesteps) - 1
    for i, t in enumerate(ref.timesteps):
        m = _model(x_ref, t)
        o_ours = ours.step(m, t, x_ref, generator=gens[0], **step_kwargs)
        o_ref = ref.step(m, t, x_ref, generator=gens[1], **step_kwargs)
        o_orc = oracle.step(m.double(), int(t), x_ref.double(), generator=gens[2], **step_kwargs)
        o_free = free.step(_model(x_free, t), t, x_free, generator=gens[3], **step_kwargs)
        for k in (0, 1):
            expected_ref, expected_orc = o_ref[k], o_orc[k]
            if p7 and kind == "lcm" and i == last and k == 0:
                # Deliberate difference (P7): diffusers re-noises its last LCM output here; fewstep
                # returns `denoised`, which is compared with diffusers' `denoised`.
                expected_ref, expected_orc = o_ref[1], o_orc[1]
            # Relative to the larger of the output and the input sample: float32 rounding of a linear
            # combination is relative to its terms, and where clip_sample shrinks x0 (e.g. to 0.5 at
            # t=999, where x0 ~ 14.6 x_t - ...) the terms are the input's size, not the output's.
            scale = max(float(expected_orc.abs().max()), float(x_ref.abs().max()))
            to_oracle = _rel(o_ours[k], expected_orc, scale)
            ref_error = _rel(expected_ref, expected_orc, scale)
            failures.check(to_oracle <= 1e-6, "oracle", kind, config, set_kwargs, step_kwargs, int(t), k, to_oracle)
            failures.check(
                _rel(o_ours[k], expected_ref, scale) <= 1e-6 + ref_error,
                "diffusers", kind, config, set_kwargs, step_kwargs, int(t), k, ref_error,
            )
            assert o_ours[k].dtype == torch.float32 and isinstance(o_ours[k], torch.Tensor)
        x_ref, x_free = o_ref.prev_sample, o_free.prev_sample
        if p7 and kind == "lcm" and i == last:
            x_ref = o_ref.denoised
    # Free-running: two float32 implementations of the same maths round differently at every step and
    # the trajectories drift apart; over up to 50 steps the drift measured <= 6e-6 of max|x| (cosine
    # schedule, where diffusers' own float32 coefficients are the least accurate), so 2e-5 bounds it.
    drift = _rel(x_free, x_ref, float(x_ref.abs().max()))
    failures.check(drift <= 2e-5, "free-run", kind, config, set_kwargs, step_kwargs, drift)


def _run_float64(kind, config, set_kwargs, step_kwargs, failures, table=None):
    """Free-running float64 loops: fewstep vs diffusers' maths in float64, same float32-stream noise."""
    torch = _torch()
    ours_cls, ref_cls = _classes(kind)
    ours, oracle = ours_cls(**config), _oracle(ref_cls, config, table)
    if _set_both(ours, oracle, **set_kwargs) is not None:
        return
    g_ours, g_ref = fewstep.Generator(11), fewstep.Generator(11)
    x_ours = x_ref = _initial_sample().double()
    for t in oracle.timesteps:
        o_ours = ours.step(_model(x_ours, t), t, x_ours, generator=g_ours, **step_kwargs)
        o_ref = oracle.step(_model(x_ref, t), int(t), x_ref, generator=g_ref, **step_kwargs)
        for k in (0, 1):
            err = _rel(o_ours[k], o_ref[k], float(o_ref[k].abs().max()))
            failures.check(err <= 1e-12, "float64", kind, config, set_kwargs, step_kwargs, int(t), k, err)
            assert o_ours[k].dtype == torch.float64
        x_ours, x_ref = o_ours.prev_sample, o_ref.prev_sample


def _grid():
    """(kind, config, set_kwargs, step_kwargs) over schedules x predictions x eta x steps x strength x
    explicit/implicit original_inference_steps."""
    for schedule, prediction, n, strength, original in itertools.product(
        SCHEDULES, PREDICTIONS, STEPS, STRENGTHS, ORIGINAL_STEPS
    ):
        config = dict(beta_schedule=schedule, prediction_type=prediction)
        set_kwargs = dict(num_inference_steps=n, strength=strength, original_inference_steps=original)
        for eta in ETAS:
            yield "tcd", config, set_kwargs, dict(eta=eta)
        yield "lcm", config, set_kwargs, {}


# ---------------------------------------------------------------------------------------------
# timesteps


@pytest.mark.torch
def test_timesteps_identical_to_diffusers_or_both_raise():
    raised = 0
    for kind, T, n, strength, original in itertools.product(
        ("tcd", "lcm"), (1000, 500, 100), STEPS + (3, 6, 10, 25, 60, 100, 101), STRENGTHS + (0.58, 0.29, 0.99, 0.01),
        (None, 50, 20, 100, 1000, 1200),
    ):
        ours_cls, ref_cls = _classes(kind)
        ours, ref = ours_cls(num_train_timesteps=T), ref_cls(num_train_timesteps=T)
        raised += _set_both(ours, ref, num_inference_steps=n, original_inference_steps=original, strength=strength) is not None
        if ours.num_inference_steps is not None:
            assert ours.num_inference_steps == ref.num_inference_steps == len(ours.timesteps)
            assert ours.custom_timesteps is ref.custom_timesteps is False
    assert raised > 0  # the grid does reach diffusers' errors


@pytest.mark.torch
def test_custom_timesteps_identical_to_diffusers():
    for kind, timesteps, strength, original in itertools.product(("tcd", "lcm"), CUSTOM_LISTS, STRENGTHS, (None, 50)):
        ours_cls, ref_cls = _classes(kind)
        ours, ref = ours_cls(), ref_cls()
        if _set_both(ours, ref, timesteps=list(timesteps), strength=strength, original_inference_steps=original):
            continue
        assert ours.custom_timesteps and ref.custom_timesteps
        # Deliberate difference: num_inference_steps is the length actually kept (diffusers: the full list).
        assert ref.num_inference_steps == len(timesteps)
        assert ours.num_inference_steps == len(ours.timesteps)


def test_reference_timestep_tables():
    # shared/reference/tcd-lcm.md §2.1 and §3 (verified against torch there).
    tcd, lcm = fewstep.TCDScheduler(), fewstep.LCMScheduler()
    tables = {
        1: [999], 2: [999, 499], 3: [999, 679, 339], 4: [999, 759, 499, 259], 6: [999, 839, 679, 499, 339, 179],
        8: [999, 879, 759, 639, 499, 379, 259, 139],
        26: [999, 979, 939, 899, 859, 819, 779, 739, 699, 659, 619, 579, 539, 499, 479, 439, 399, 359, 319, 279,
             239, 199, 159, 119, 79, 39],
    }
    for n, expected in tables.items():
        for scheduler in (tcd, lcm):
            scheduler.set_timesteps(n)
            assert scheduler.timesteps.tolist() == expected
    lcm.set_timesteps(4, strength=0.5)
    assert lcm.timesteps.tolist() == [499, 379, 259, 139]
    lcm.set_timesteps(4, strength=0.3)
    assert lcm.timesteps.tolist() == [299, 239, 159, 79]
    tcd.set_timesteps(4, original_inference_steps=50)  # explicit: the full range (P5)
    assert tcd.timesteps.tolist() == [999, 749, 499, 249]
    tcd.set_timesteps(4, original_inference_steps=50, strength=0.75)
    assert tcd.timesteps.tolist() == [749, 562, 374, 187]


# ---------------------------------------------------------------------------------------------
# step outputs over the grid


@pytest.mark.torch
def test_step_outputs_match_diffusers_float32(float32_stream_noise):
    failures = _Failures()
    for kind, config, set_kwargs, step_kwargs in _grid():
        _run_float32(kind, config, set_kwargs, step_kwargs, failures)
    failures.assert_none()


@pytest.mark.torch
def test_full_loops_match_diffusers_maths_float64(float32_stream_noise):
    failures = _Failures()
    for kind, config, set_kwargs, step_kwargs in _grid():
        _run_float64(kind, config, set_kwargs, step_kwargs, failures)
    failures.assert_none()


@pytest.mark.torch
def test_zero_snr_custom_timesteps_and_lcm_clipping_match_diffusers(float32_stream_noise):
    failures = _Failures()
    cases = []
    # Zero terminal SNR, where valid (epsilon is refused at construction). The step maths is compared
    # on one table: diffusers is given fewstep's alphas_cumprod, whose own comparison with diffusers'
    # (torch's sqrt is not correctly rounded on every CPU) is in test_schedules.py.
    for schedule, prediction, kind, n in itertools.product(SCHEDULES, ("sample", "v_prediction"), ("tcd", "lcm"), (1, 4, 8)):
        config = dict(beta_schedule=schedule, prediction_type=prediction, rescale_betas_zero_snr=True)
        table = fewstep.TCDScheduler(**config).alphas_cumprod
        for step_kwargs in ([dict(eta=0.0), dict(eta=0.3), dict(eta=1.0)] if kind == "tcd" else [{}]):
            cases.append((kind, config, dict(num_inference_steps=n), step_kwargs, table, False))
    # Custom timesteps, with strength (P7 handled inside the comparison).
    for timesteps, strength, prediction, kind in itertools.product(CUSTOM_LISTS, STRENGTHS, PREDICTIONS, ("tcd", "lcm")):
        config = dict(prediction_type=prediction)
        for step_kwargs in ([dict(eta=0.0), dict(eta=0.3)] if kind == "tcd" else [{}]):
            p7 = strength < 1.0 and int(len(timesteps) * strength) < len(timesteps)
            cases.append((kind, config, dict(timesteps=list(timesteps), strength=strength), step_kwargs, None, p7))
    # LCM clip_sample and dynamic thresholding on x0 (TCD ignores both, as diffusers' TCD does).
    options = (
        dict(clip_sample=True),
        dict(clip_sample=True, clip_sample_range=0.5),
        dict(thresholding=True),
        dict(thresholding=True, sample_max_value=3.0, dynamic_thresholding_ratio=0.9),
    )
    for schedule, prediction, n, strength, option in itertools.product(SCHEDULES, PREDICTIONS, (2, 8), (1.0, 0.5), options):
        config = dict(beta_schedule=schedule, prediction_type=prediction, **option)
        cases.append(("lcm", config, dict(num_inference_steps=n, strength=strength), {}, None, False))
        if schedule == "scaled_linear":
            cases.append(("tcd", config, dict(num_inference_steps=n, strength=strength), dict(eta=0.3), None, False))
    for kind, config, set_kwargs, step_kwargs, table, p7 in cases:
        _run_float32(kind, config, set_kwargs, step_kwargs, failures, table=table, p7=p7)
        if not p7:
            _run_float64(kind, config, set_kwargs, step_kwargs, failures, table=table)
    failures.assert_none()


# ---------------------------------------------------------------------------------------------
# the deliberate difference (custom timesteps + strength < 1, reference P7)


@pytest.mark.torch
def test_custom_timesteps_with_strength_differs_from_diffusers_only_at_the_last_step():
    torch = _torch()
    custom = [999, 759, 499, 259]
    for kind in ("lcm", "tcd"):
        ours_cls, ref_cls = _classes(kind)
        ours, ref = ours_cls(), ref_cls()
        ours.set_timesteps(timesteps=custom, strength=0.5)
        ref.set_timesteps(timesteps=custom, strength=0.5)
        assert ours.timesteps.tolist() == ref.timesteps.tolist() == [499, 259]
        assert (ours.num_inference_steps, ref.num_inference_steps) == (2, 4)
        g_ours, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        kwargs = dict(eta=0.3) if kind == "tcd" else {}
        x = _initial_sample()
        first_ours = ours.step(_model(x, 499), 499, x, generator=g_ours, **kwargs)
        first_ref = ref.step(_model(x, 499), 499, x, generator=g_ref, **kwargs)
        # The first step is the same computation (one noise draw each); the bound is the float32 one.
        assert _rel(first_ours.prev_sample, first_ref.prev_sample, float(first_ref.prev_sample.abs().max())) < 1e-6
        x = first_ref.prev_sample
        state_before_last = g_ref.get_state()
        last_ours = ours.step(_model(x, 259), 259, x, generator=g_ours, **kwargs)
        last_ref = ref.step(_model(x, 259), 259, x, generator=g_ref, **kwargs)
        # fewstep knows this is the last step: no noise is drawn...
        assert torch.equal(g_ours.get_state(), state_before_last)
        assert not torch.equal(g_ref.get_state(), state_before_last)  # ...diffusers draws one more tensor
        if kind == "lcm":
            # ...and the output is the clean estimate, while diffusers re-noises it to the level of t=259.
            assert last_ours.prev_sample is last_ours.denoised
            scale = float(last_ref.denoised.abs().max())
            assert _rel(last_ours.denoised, last_ref.denoised, scale) < 1e-6
            z = torch.randn(x.shape, generator=torch.Generator().set_state(state_before_last))
            a = float(ref.alphas_cumprod[259])
            renoised = np.sqrt(a) * last_ref.denoised + np.sqrt(1 - a) * z
            assert _rel(last_ref.prev_sample, renoised, scale) < 1e-6
            assert _rel(last_ours.prev_sample, last_ref.prev_sample, scale) > 0.1
        else:
            # TCD's extra draw is multiplied by sqrt(1 - a_0/a_0) = 0: the outputs agree anyway.
            assert _rel(last_ours.prev_sample, last_ref.prev_sample, float(last_ref.prev_sample.abs().max())) < 1e-6


# ---------------------------------------------------------------------------------------------
# diffusers' published scheduler test values (reference §12), on NumPy arrays


def _dummy_sample_deter():
    n = 4 * 3 * 8 * 8
    return (np.arange(n, dtype=np.float32).reshape(3, 8, 8, 4) / np.float32(n)).transpose(3, 0, 1, 2).copy()


def _dummy_model(sample, t):
    t = np.float32(t)
    return sample * t / (t + np.float32(1.0))


def _published_loop(cls, steps, **step_kwargs):
    scheduler = cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.0120, beta_schedule="scaled_linear",
                    prediction_type="epsilon")
    scheduler.set_timesteps(steps)
    generator = fewstep.Generator(0)  # reproduces torch.manual_seed(0)'s noise
    sample = _dummy_sample_deter()
    for t in scheduler.timesteps:
        sample = scheduler.step(_dummy_model(sample, t), t, sample, generator=generator, **step_kwargs).prev_sample
    assert isinstance(sample, np.ndarray) and sample.dtype == np.float32
    return float(np.abs(sample).sum()), float(np.abs(sample).mean())


@pytest.mark.parametrize(
    "cls, steps, kwargs, expected_sum, expected_mean",
    [
        (fewstep.TCDScheduler, 1, dict(eta=0.0), 29.8715, 0.0389),
        (fewstep.TCDScheduler, 10, dict(eta=0.0), 181.2040, 0.2359),
        (fewstep.LCMScheduler, 1, {}, 18.7097, 0.0244),
        (fewstep.LCMScheduler, 10, {}, 197.7616, 0.2575),
    ],
)
def test_diffusers_published_full_loop_values(cls, steps, kwargs, expected_sum, expected_mean):
    total, mean = _published_loop(cls, steps, **kwargs)
    # diffusers' own tests assert these to 1e-3 absolute.
    assert abs(total - expected_sum) < 1e-3
    assert abs(mean - expected_mean) < 1e-3


# ---------------------------------------------------------------------------------------------
# the rest of the scheduler interface


@pytest.mark.torch
def test_add_noise_and_get_velocity_match_diffusers():
    torch = _torch()
    for kind in ("tcd", "lcm"):
        ours_cls, ref_cls = _classes(kind)
        ours, ref = ours_cls(), ref_cls()
        x0, noise = _initial_sample(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
        for timesteps in (torch.tensor([999]), torch.tensor([499, 19]), torch.tensor([0, 0])):
            for method in ("add_noise", "get_velocity"):
                a = getattr(ours, method)(x0, noise, timesteps)
                b = getattr(ref, method)(x0, noise, timesteps)
                # Coefficients are the correctly rounded float32 square roots; diffusers' float32 pow(0.5)
                # may be one ulp off on some CPUs, hence 1 ulp (6e-8) of relative difference.
                assert a.dtype == torch.float32
                assert _rel(a, b, float(b.abs().max())) <= 2e-7
        a = ours.add_noise(x0.numpy(), noise.numpy(), 499)
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_allclose(a, ref.add_noise(x0, noise, torch.tensor([499])).numpy(), rtol=0, atol=2e-7 * 4)


@pytest.mark.torch
def test_begin_index_duplicates_and_previous_timestep_match_diffusers():
    torch = _torch()
    for kind in ("tcd", "lcm"):
        ours_cls, ref_cls = _classes(kind)
        ours, ref = ours_cls(), ref_cls()
        ours.set_timesteps(8)
        ref.set_timesteps(8)
        for t in ref.timesteps:
            assert ours.previous_timestep(t) == int(ref.previous_timestep(t))
        schedule = torch.tensor([999, 759, 759, 499])
        assert ours.index_for_timestep(759, schedule) == ref.index_for_timestep(759, schedule) == 2
        assert ours.index_for_timestep(499, schedule) == ref.index_for_timestep(499, schedule) == 3
        ours.set_begin_index(3)
        ref.set_begin_index(3)
        x = _initial_sample()
        kwargs = dict(eta=0.0) if kind == "tcd" else dict(generator=torch.Generator().manual_seed(0))
        kwargs_ours = dict(eta=0.0) if kind == "tcd" else dict(generator=torch.Generator().manual_seed(0))
        t = int(ref.timesteps[3])
        a = ours.step(_model(x, t), t, x, **kwargs_ours)
        b = ref.step(_model(x, t), t, x, **kwargs)
        assert ours.step_index == ref.step_index == 4
        assert _rel(a.prev_sample, b.prev_sample, float(b.prev_sample.abs().max())) < 1e-6
        assert ours.order == ref.order == 1 and ours.init_noise_sigma == ref.init_noise_sigma == 1.0
        assert len(ours) == len(ref) == 1000
        assert ours.scale_model_input(x, 999) is x


@pytest.mark.torch
def test_timestep_may_be_any_integer_scalar_and_outputs_keep_dtype():
    torch = _torch()
    x = _initial_sample()
    results = []
    for timestep in (999, np.int64(999), torch.tensor(999), torch.tensor([999]), np.array([999]), 999.0):
        scheduler = fewstep.TCDScheduler()
        scheduler.set_timesteps(4)
        results.append(scheduler.step(_model(x, 999), timestep, x, eta=0.0).prev_sample)
    assert all(torch.equal(r, results[0]) for r in results)
    # float16 in, float16 out (Python-float coefficients do not promote), close to diffusers' float16 step.
    from diffusers import TCDScheduler as RefTCD

    ours, ref = fewstep.TCDScheduler(), RefTCD()
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    h = x.half()
    a = ours.step(_model(h, 999), 999, h, eta=0.0, return_dict=False)
    b = ref.step(_model(h, 999), 999, h, eta=0.0, return_dict=False)
    assert isinstance(a, tuple) and len(a) == 2 and a[0].dtype == torch.float16
    # float16 keeps 11 bits; diffusers rounds after every op in a different order: a few ulps of 2^-11.
    assert _rel(a[0], b[0], float(b[0].abs().max())) < 4e-3


@pytest.mark.torch
def test_guidance_scale_embedding_matches_diffusers():
    torch = _torch()
    from diffusers import LatentConsistencyModelPipeline

    from fewstep.core.guidance import guidance_scale_embedding

    guidance = np.array([1.0, 1.5, 2.0, 4.5, 7.5, 8.5, 13.0])
    for dim in (256, 512, 320, 257):
        for dtype in ("float32", "float64"):
            ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
                None, torch.tensor(guidance - 1, dtype=torch.float32), embedding_dim=dim, dtype=getattr(torch, dtype)
            ).numpy()
            ours = guidance_scale_embedding(guidance - 1, embedding_dim=dim, dtype=dtype)
            assert ours.shape == ref.shape == (len(guidance), dim) and ours.dtype == ref.dtype
            if dtype == "float64":
                # Same float32 frequencies and products (the reference forms them in float32 too), then
                # float64 sin/cos: the two differ only in the last bits of the transcendental functions.
                np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-11)
                continue
            # torch's float32 exp is not correctly rounded for ~1% of inputs, so now and then a frequency
            # f_k is one ulp off; the argument 1000*w*f_k (up to 1.2e4 rad) then moves by up to
            # 1.2e4 * 2^-24 ~ 7e-4 rad, shifting that column's sin/cos by as much. Every other entry
            # is within a float32 ulp or two of sin/cos.
            close = np.abs(ours - ref) <= 2.5e-7
            assert np.abs(ours - ref).max() <= 1e-3
            bad_columns = np.unique(np.nonzero(~close)[1] % (dim // 2))
            assert len(bad_columns) <= max(2, dim // 100), bad_columns


# ---------------------------------------------------------------------------------------------
# configuration round trips with diffusers


_SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
_SDXL_DDIM = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": True,  # inherited by LCM, which then clips x0 (reference §1)
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def _init_keys(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.torch
@pytest.mark.parametrize("source", [_SD15_SCHEDULER, _SDXL_DDIM])
def test_from_config_dict_folder_and_file_like_diffusers(tmp_path, source):
    for kind in ("tcd", "lcm"):
        ours_cls, ref_cls = _classes(kind)
        ref = ref_cls.from_config(dict(source))
        pipeline = tmp_path / kind / "pipeline"
        (pipeline / "scheduler").mkdir(parents=True)
        (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
        (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps(source))
        loaded = [
            ours_cls.from_config(dict(source)),
            ours_cls.from_config(pipeline / "scheduler"),
            ours_cls.from_config(str(pipeline / "scheduler" / "scheduler_config.json")),
            ours_cls.from_config(pipeline, subfolder="scheduler"),
            ours_cls.from_pretrained(pipeline, subfolder="scheduler"),
            ours_cls.from_config(ref.config),  # a diffusers FrozenDict
        ]
        for ours in loaded:
            # Everything diffusers keeps, we keep: the constructor's keys and the unused ones.
            assert _init_keys(ours.config) == _init_keys(ref.config)
            assert ours.config["_class_name"] == ref.config["_class_name"] == ref_cls.__name__
            assert ours.config.skip_prk_steps is True and ours.config.steps_offset == 1
            np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
        with pytest.raises(FileNotFoundError, match="subfolder='scheduler'"):
            ours_cls.from_config(pipeline)


@pytest.mark.torch
def test_use_default_values_follow_diffusers():
    """A config whose values were defaults (diffusers lists them in `_use_default_values`) gives the
    target class its own defaults, as in diffusers: DDIMScheduler() defaults to a linear schedule."""
    from diffusers import DDIMScheduler

    for kind in ("tcd", "lcm"):
        ours_cls, ref_cls = _classes(kind)
        source = DDIMScheduler(prediction_type="v_prediction").config
        ours, ref = ours_cls.from_config(source), ref_cls.from_config(source)
        assert _init_keys(ours.config) == _init_keys(ref.config)
        assert ours.config.beta_schedule == "scaled_linear" and ours.config.prediction_type == "v_prediction"
        ref_back, ours_back = ref_cls.from_config(ours_cls().config), ref_cls.from_config(ref_cls().config)
        assert _init_keys(ref_back.config) == _init_keys(ours_back.config)


@pytest.mark.torch
def test_save_config_round_trips_and_diffusers_reads_it(tmp_path):
    for kind in ("tcd", "lcm"):
        ours_cls, ref_cls = _classes(kind)
        ours = ours_cls(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_scaling=5.0,
                        trained_betas=None, original_inference_steps=25)
        path = ours.save_config(tmp_path / kind)
        assert os.path.basename(path) == "scheduler_config.json"
        ref = ref_cls.from_pretrained(tmp_path / kind)
        again = ours_cls.from_config(tmp_path / kind)
        from_dict = ref_cls.from_config(ours.config)
        for other in (ref, from_dict):
            assert _init_keys(other.config) == _init_keys(ours.config)
            np.testing.assert_array_equal(ours.alphas_cumprod, other.alphas_cumprod.numpy())
        assert _init_keys(again.config) == _init_keys(ours.config)
        with open(path) as f:
            saved = json.load(f)
        assert saved["_class_name"] == ref_cls.__name__ and "_use_default_values" not in saved
        ours.set_timesteps(4)
        ref.set_timesteps(4)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    # trained_betas given as a NumPy array is saved as a list diffusers reads back.
    betas = schedules.make_betas("linear", 1000, 0.0001, 0.02)
    ours = fewstep.TCDScheduler(trained_betas=betas)
    ours.save_config(tmp_path / "trained")
    ref = _classes("tcd")[1].from_pretrained(tmp_path / "trained")
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())


def test_config_is_a_frozen_dict_with_attribute_access():
    import copy
    import pickle

    scheduler = fewstep.LCMScheduler(prediction_type="v_prediction")
    config = scheduler.config
    assert isinstance(config, dict) and config["_class_name"] == "LCMScheduler"
    assert config.prediction_type == "v_prediction" and config.num_train_timesteps == 1000
    assert "prediction_type" not in config["_use_default_values"] and "beta_start" in config["_use_default_values"]
    with pytest.raises(TypeError, match="from_config"):
        config["prediction_type"] = "epsilon"
    with pytest.raises(TypeError):
        config.prediction_type = "epsilon"
    with pytest.raises(AttributeError):
        config.no_such_key
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(scheduler).config == config
    override = fewstep.LCMScheduler.from_config(config, prediction_type="sample")
    assert override.config.prediction_type == "sample"
