"""fewstep's EulerDiscreteScheduler / EulerAncestralDiscreteScheduler against the installed diffusers.

Numbers are judged as in test_schedulers_vs_diffusers.py (whose helpers are used):

* Schedules: timesteps, sigmas and init_noise_sigma bit for bit diffusers', once torch's float32 sqrt is put
  in for fewstep's (`sigmas.sqrt32`, and `schedules`' for the zero-SNR rescale): on some CPUs torch's is one ulp
  off for ~15% of inputs, NumPy's never. Two further torch calls are SLEEF's (1 ulp): exp in log_linear sigmas
  and log in continuous timesteps, where fewstep is correctly rounded and may differ by one ulp. With
  fewstep's own sqrt the schedules are compared to that relative accuracy.
* float32 / float16 steps, teacher-forced on diffusers' trajectory: diffusers is handed fewstep's sigmas (so
  only the step's arithmetic differs), and the oracle is diffusers' own step code on float64 tensors with the
  float64 sigmas (its `sample.to(torch.float32)` upcast kept in float64). Per step and output:
      |fewstep - oracle| <= tol * scale   and   |fewstep - oracle| <= |diffusers - oracle| + tol * scale
  with tol = 1e-6 (float32) or one float16 ulp 2^-11 (float16 prev_sample), scale = the largest term of the
  step (max |oracle output|, max |x|, max |m| * max(sigma, 1)). Both draw the same noise (torch.Generator).
  Where diffusers' float16 arithmetic overflows (sigma_hat * m > 65504 with a large s_churn) only the first holds.
* float64 loops, free-running: fewstep vs the oracle within 1e-11 (see the assert).
* NumPy, torch and MindSpore: bitwise equal to one another.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import fewstep
from fewstep.core import schedules
from fewstep.core.schedulers import sigmas as sigmas_module
from fewstep.core.schedulers.euler import EulerDiscreteScheduler
from fewstep.core.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
# The autouse fixture that sets diffusers' and fewstep's loggers to ERROR for each test: diffusers warns when
# step() comes without scale_model_input, and the teacher-forced loops do that.
from test_ddim_scheduler import OTHER_BACKENDS, assert_bitwise_equal
from test_schedulers_vs_diffusers import _Failures, _model, _quiet_custom_timestep_warnings, _rel  # noqa: F401

SHAPE = (2, 4, 8, 8)
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")




def _has_scipy():
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def _random_euler_config(rng):
    sigma_kind = rng.choice(["none", "none", "karras", "exponential"] + (["beta"] if _has_scipy() else []))
    prediction = rng.choice(["epsilon", "sample", "v_prediction"])
    config = dict(
        beta_schedule=str(rng.choice(SCHEDULES)), prediction_type=str(prediction),
        timestep_spacing=str(rng.choice(SPACINGS)), interpolation_type=str(rng.choice(["linear", "linear", "log_linear"])),
        final_sigmas_type=str(rng.choice(["zero", "sigma_min"])), steps_offset=int(rng.choice([0, 1])),
        rescale_betas_zero_snr=bool(rng.random() < 0.2), timestep_type=str(rng.choice(["discrete", "continuous"])),
        use_karras_sigmas=sigma_kind == "karras", use_exponential_sigmas=sigma_kind == "exponential",
        use_beta_sigmas=sigma_kind == "beta", num_train_timesteps=int(rng.choice([1000, 1000, 500])),
    )
    if sigma_kind != "none" and rng.random() < 0.3:
        config.update(sigma_min=0.03, sigma_max=10.0)
    return config


def _random_ancestral_config(rng):
    return dict(beta_schedule=str(rng.choice(SCHEDULES)), prediction_type=str(rng.choice(["epsilon", "v_prediction"])),
                timestep_spacing=str(rng.choice(SPACINGS)), steps_offset=int(rng.choice([0, 1])),
                rescale_betas_zero_snr=bool(rng.random() < 0.2), num_train_timesteps=int(rng.choice([1000, 500])))


def _cases(n_euler=60, n_ancestral=30, seed=0):
    """(ours class, diffusers class name, config, set_timesteps kwargs) over random configs and step counts."""
    rng = np.random.default_rng(seed)
    for _ in range(n_euler):
        config = _random_euler_config(rng)
        steps = int(rng.choice([1, 2, 3, 4, 8, 13, 25, 61]))
        yield EulerDiscreteScheduler, "EulerDiscreteScheduler", config, dict(num_inference_steps=steps)
    for _ in range(n_ancestral):
        config = _random_ancestral_config(rng)
        steps = int(rng.choice([1, 2, 3, 4, 8, 13, 61]))
        yield EulerAncestralDiscreteScheduler, "EulerAncestralDiscreteScheduler", config, dict(num_inference_steps=steps)
    for timesteps, sigmas in (([999, 749, 499, 249], None), ([980.5, 500.25, 3.0], None), (None, [14.6, 4.0, 1.0, 0.1, 0.0]),
                              (None, [8.0, 0.5, 0.5])):
        kwargs = dict(timesteps=timesteps) if timesteps else dict(sigmas=sigmas)
        for prediction in ("epsilon", "sample", "v_prediction"):
            yield EulerDiscreteScheduler, "EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", prediction_type=prediction), kwargs


def _torch_sqrt32(x):
    import torch

    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(np.array(x, ndmin=1)).sqrt().numpy().reshape(x.shape)


class _NumpyWithTorchSqrt:
    """`schedules`' NumPy with torch's float32 sqrt, as tests/test_schedules.py substitutes it."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def sqrt(x):
        return _torch_sqrt32(x) if np.asarray(x).dtype == np.float32 else np.sqrt(x)


def _one_ulp_allowed(cls, config):
    """Which outputs take a SLEEF transcendental in diffusers: (sigmas, timesteps)."""
    if cls is not EulerDiscreteScheduler:
        return False, False
    continuous = config.get("timestep_type") == "continuous" and config.get("prediction_type") == "v_prediction"
    return config.get("interpolation_type") == "log_linear", continuous or config.get("interpolation_type") == "log_linear"


def _equal_or_ulp(ours, ref, ulp_allowed):
    if ours.shape != ref.shape:
        return False
    if not ulp_allowed:
        return np.array_equal(ours, ref)
    return bool(np.all(np.abs(ours - ref) <= np.spacing(np.abs(ref).astype(np.float32)) * 1.0 + 1e-6 * (ref == 0)))


# ---------------------------------------------------------------------------------------------
# schedules


@pytest.mark.torch
def test_timesteps_sigmas_and_init_noise_sigma_match_diffusers(monkeypatch):
    import diffusers

    monkeypatch.setattr(sigmas_module, "sqrt32", _torch_sqrt32)
    monkeypatch.setattr(schedules, "np", _NumpyWithTorchSqrt())
    failures = _Failures()
    for cls, name, config, kwargs in _cases():
        ours, ref = cls(**config), getattr(diffusers, name)(**config)
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
        for stage in ("init", "set"):
            if stage == "set":
                ref.set_timesteps(**kwargs)
                ours.set_timesteps(**kwargs)
            sig_ulp, ts_ulp = _one_ulp_allowed(cls, config)
            sig_ulp = sig_ulp and stage == "set"  # log_linear acts at set_timesteps; continuous timesteps at both
            failures.check(_equal_or_ulp(ours.sigmas, ref.sigmas.numpy(), sig_ulp), "sigmas", name, config, kwargs, stage)
            failures.check(_equal_or_ulp(ours.timesteps, ref.timesteps.numpy(), ts_ulp), "timesteps", name, config, kwargs, stage)
            failures.check(ours.timesteps.dtype == ref.timesteps.numpy().dtype, "dtype", name, config, stage)
            init_ok = float(ours.init_noise_sigma) == float(ref.init_noise_sigma)
            failures.check(init_ok or sig_ulp, "init_noise_sigma", name, config, kwargs, stage)
        assert ours.num_inference_steps == ref.num_inference_steps
    failures.assert_none()


@pytest.mark.torch
def test_schedules_with_numpys_sqrt_are_within_its_rounding():
    import diffusers

    for cls, name, config, kwargs in _cases(n_euler=25, n_ancestral=10, seed=1):
        ours, ref = cls(**config), getattr(diffusers, name)(**config)
        ours.set_timesteps(**kwargs)
        ref.set_timesteps(**kwargs)
        # one ulp in a square root; the zero-SNR rescale (1 - alpha, cancelling digits) as in test_schedules.py
        rtol = 5e-3 if config.get("rescale_betas_zero_snr") else 2e-6
        np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=rtol, atol=0)
        np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=rtol, atol=1e-3)


@pytest.mark.torch
def test_invalid_schedules_raise_where_diffusers_does_and_change_nothing():
    import diffusers

    ours, ref = EulerDiscreteScheduler(use_karras_sigmas=True), diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    ours.set_timesteps(4)
    before = (ours.timesteps.copy(), ours.sigmas.copy(), ours.num_inference_steps)
    for kwargs in (dict(), dict(num_inference_steps=4, timesteps=[999, 500]), dict(timesteps=[999, 500], sigmas=[1.0, 0.0]),
                   dict(timesteps=[999, 500])):
        with pytest.raises(ValueError):
            ref.set_timesteps(**kwargs)
        with pytest.raises(ValueError) as err:
            ours.set_timesteps(**kwargs)
        assert "Pass" in str(err.value) or "use_karras_sigmas" in str(err.value)
    after = (ours.timesteps, ours.sigmas, ours.num_inference_steps)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    # fewstep refuses up front what diffusers accepts and then computes nonsense with
    plain = EulerDiscreteScheduler()
    for kwargs, message in ((dict(timesteps=[500, 999]), "strictly descending"), (dict(timesteps=[1500, 10]), "must lie in"),
                            (dict(sigmas=[1.0]), "at least two"), (dict(sigmas=[1.0, 2.0, 0.0]), "descending"),
                            (dict(sigmas=[2.0, 2.0, 0.0]), "descending"),
                            (dict(num_inference_steps=0), "at least 1"), (dict(num_inference_steps=1001), "cannot exceed")):
        with pytest.raises(ValueError, match=message):
            plain.set_timesteps(**kwargs)
    assert plain.num_inference_steps is None and len(plain.timesteps) == 1000
    for bad, message in ((dict(timestep_spacing="even"), "timestep_spacing"), (dict(interpolation_type="cubic"), "interpolation_type"),
                         (dict(final_sigmas_type="one"), "final_sigmas_type"), (dict(prediction_type="x0"), "prediction_type"),
                         (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "Only one of"),
                         (dict(beta_schedule="cubic"), "beta_schedule"), (dict(timestep_type="fuzzy"), "timestep_type")):
        with pytest.raises(ValueError, match=message):
            EulerDiscreteScheduler(**bad)
    with pytest.raises(ValueError, match="timestep_spacing"):
        EulerAncestralDiscreteScheduler(timestep_spacing="even")
    if not _has_scipy():
        for cls in (EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler):
            with pytest.raises(ImportError, match="scipy"):
                cls(use_beta_sigmas=True)


# ---------------------------------------------------------------------------------------------
# steps


class _Holder:
    noise_dtype = None


@pytest.fixture
def same_noise(monkeypatch):
    """diffusers' Euler modules draw as randn_tensor does, except: float64 draws (the oracle) take the stream of the
    float32/float16 run they shadow (`_Holder.noise_dtype`), upcast; a fewstep.Generator draws its own stream."""
    import torch
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as anc
    from diffusers.schedulers import scheduling_euler_discrete as eul

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if isinstance(generator, fewstep.Generator):
            return torch.from_numpy(generator.randn(tuple(shape), dtype=str(dtype).split(".")[-1])).to(dtype)
        draw = _Holder.noise_dtype if dtype == torch.float64 else dtype
        return torch.randn(tuple(shape), generator=generator, dtype=draw).to(dtype)

    monkeypatch.setattr(eul, "randn_tensor", randn_tensor)
    monkeypatch.setattr(anc, "randn_tensor", randn_tensor)


def _float64_class():
    """torch tensors whose `.to(torch.float32)` keeps float64: diffusers' step upcasts the sample to float32,
    which in the oracle must stay float64 (the whole step then runs in float64)."""
    import torch

    class Float64(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to and len(args) == 2 and args[1] is torch.float32 and args[0].dtype == torch.float64:
                return args[0]
            return super().__torch_function__(func, types, args, kwargs)

    return Float64


def _oracle(name, config, sigmas):
    import diffusers
    import torch

    oracle = getattr(diffusers, name)(**config)
    return oracle, torch.from_numpy(np.asarray(sigmas, dtype=np.float32).astype(np.float64))


def _step_kwargs(cls, rng):
    if cls is EulerDiscreteScheduler and rng.random() < 0.4:
        return dict(s_churn=float(rng.choice([0.5, 2.0, 40.0])), s_tmin=float(rng.choice([0.0, 0.5])), s_noise=1.003)
    return {}


def _run_teacher_forced(cls, name, config, kwargs, step_kwargs, dtype, failures):
    import diffusers
    import torch

    ours, ref = cls(**config), getattr(diffusers, name)(**config)
    ours.set_timesteps(**kwargs)
    ref.set_timesteps(**kwargs)
    # compare the step's arithmetic on one schedule (see the module docstring for the schedules themselves)
    ref.sigmas, ref.timesteps = torch.from_numpy(ours.sigmas.copy()), torch.from_numpy(ours.timesteps.copy())
    oracle, sig64 = _oracle(name, config, ours.sigmas)
    oracle.set_timesteps(**kwargs)
    oracle.sigmas, oracle.timesteps = sig64, torch.from_numpy(ours.timesteps.copy())
    Float64 = _float64_class()
    _Holder.noise_dtype = dtype
    gens = [torch.Generator().manual_seed(7) for _ in range(3)]
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234)) * float(ours.init_noise_sigma)).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 2.0**-11
    for t in ref.timesteps:
        m = _model(ref.scale_model_input(x, t).float(), t).to(dtype)
        o_ours = ours.step(m, t, x, generator=gens[0], **step_kwargs)
        o_ref = ref.step(m, t, x, generator=gens[1], **step_kwargs)
        o_orc = oracle.step(m.double().as_subclass(Float64), t, x.double().as_subclass(Float64), generator=gens[2], **step_kwargs)
        sigma = float(ours.sigmas[ours.step_index - 1])
        for k in (0, 1):
            orc = torch.Tensor(o_orc[k]).double() if isinstance(o_orc[k], Float64) else o_orc[k].double()
            scale = max(float(orc.abs().max()), float(x.double().abs().max()), float(m.double().abs().max()) * max(sigma, 1.0))
            k_tol = tol if k == 0 else 1e-6
            err_ours, err_ref = _rel(o_ours[k], orc, scale), _rel(o_ref[k], orc, scale)
            failures.check(err_ours <= k_tol or not np.isfinite(scale), "oracle", name, config, kwargs, step_kwargs, dtype, float(t), k, err_ours)
            # (diffusers' float16 arithmetic overflows where sigma_hat * m passes 65504: NaN, only the oracle bound)
            failures.check(err_ours <= err_ref + k_tol or not np.isfinite(err_ref), "diffusers", name, config, kwargs, step_kwargs, dtype, float(t), k, err_ours, err_ref)
            failures.check(o_ours[k].dtype == o_ref[k].dtype, "dtype", name, config, k, o_ours[k].dtype, o_ref[k].dtype)
        x = o_ref.prev_sample


@pytest.mark.torch
def test_steps_match_diffusers_float32_and_float16(same_noise):
    import torch

    rng = np.random.default_rng(5)
    failures = _Failures()
    for cls, name, config, kwargs in _cases(n_euler=40, n_ancestral=20, seed=2):
        if config.get("rescale_betas_zero_snr") and config.get("prediction_type") == "epsilon":
            config = dict(config, prediction_type="v_prediction")  # epsilon from sigma ~ 4096: pure noise, no signal
        step_kwargs = _step_kwargs(cls, rng)
        for dtype in (torch.float32, torch.float16):
            _run_teacher_forced(cls, name, config, kwargs, step_kwargs, dtype, failures)
    failures.assert_none()


@pytest.mark.torch
def test_float64_loops_match_diffusers_maths(same_noise):
    import diffusers
    import torch

    rng = np.random.default_rng(9)
    failures = _Failures()
    Float64 = _float64_class()
    for cls, name, config, kwargs in _cases(n_euler=25, n_ancestral=12, seed=3):
        step_kwargs = _step_kwargs(cls, rng)
        ours = cls(**config)
        ours.set_timesteps(**kwargs)
        oracle, sig64 = _oracle(name, config, ours.sigmas)
        oracle.set_timesteps(**kwargs)
        oracle.sigmas, oracle.timesteps = sig64, torch.from_numpy(ours.timesteps.copy())
        g_ours, g_ref = fewstep.Generator(11), fewstep.Generator(11)
        x_ours = x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).double() * float(ours.init_noise_sigma)
        for t in oracle.timesteps:
            m_ours = _model(ours.scale_model_input(x_ours, t), t)
            m_ref = _model(torch.Tensor(oracle.scale_model_input(x_ref.as_subclass(Float64), t)).double(), t)
            o_ours = ours.step(m_ours, t, x_ours, generator=g_ours, **step_kwargs)
            o_ref = oracle.step(m_ref.as_subclass(Float64), t, x_ref.as_subclass(Float64), generator=g_ref, **step_kwargs)
            sigma = float(ours.sigmas[ours.step_index - 1])
            for k in (0, 1):
                ref_k = torch.Tensor(o_ref[k]).double()
                # relative to the step's largest term, as in float32 (v-prediction at sigma ~ 1e3 cancels x's size)
                scale = max(float(ref_k.abs().max()), float(x_ours.abs().max()), float(m_ours.abs().max()) * max(sigma, 1.0))
                err = _rel(o_ours[k], ref_k, scale)
                # 1e-11: on the cosine schedule (sigma_max ~ 1e4) with v-prediction the reference's own
                # x / (sigma^2 + 1) + (x - x0) / sigma * dt loses ~4 digits; measured <= 3.2e-12 there, ~1e-16 elsewhere
                failures.check(err <= 1e-11, "float64", name, config, kwargs, step_kwargs, float(t), k, err)
                assert o_ours[k].dtype == torch.float64
            x_ours, x_ref = o_ours.prev_sample, torch.Tensor(o_ref.prev_sample).double()
    failures.assert_none()
    del diffusers


def test_ancestral_sample_prediction_is_the_epsilon_step_of_the_same_x0():
    # diffusers raises NotImplementedError for it; fewstep's x0 = model output, which is the epsilon step
    # given eps = (x - x0) / sigma.
    rng = np.random.default_rng(0)
    for spacing in SPACINGS:
        a = EulerAncestralDiscreteScheduler(prediction_type="sample", timestep_spacing=spacing)
        b = EulerAncestralDiscreteScheduler(prediction_type="epsilon", timestep_spacing=spacing)
        a.set_timesteps(4)
        b.set_timesteps(4)
        x = rng.standard_normal(SHAPE) * float(a.init_noise_sigma)
        ga, gb = fewstep.Generator(1), fewstep.Generator(1)
        for i, t in enumerate(a.timesteps):
            x0 = np.tanh(x)
            eps = (x - x0) / float(a.sigmas[i])
            out_a, out_b = a.step(x0, t, x, generator=ga), b.step(eps, t, x, generator=gb)
            np.testing.assert_allclose(out_a.prev_sample, out_b.prev_sample, rtol=0, atol=1e-12 * np.abs(x).max())
            assert out_a.pred_original_sample is x0
            x = out_a.prev_sample


# ---------------------------------------------------------------------------------------------
# backends


def _host_model(x, t):
    return (np.tanh(x.astype(np.float32)) * np.float32(0.9) + np.float32(0.1 * np.cos(float(t) / 50.0))).astype(x.dtype)


def _backend_loop(backend, cls, config, step_kwargs, dtype):
    from fewstep.backends import get_backend

    ops = get_backend(backend)
    scheduler = cls(**config)
    scheduler.set_timesteps(5)
    generator = fewstep.Generator(21)
    host = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    clean = ops.from_numpy(host * np.float32(0.5), dtype=dtype)
    scheduler.set_begin_index(1)  # img2img: noise the clean sample to the second step's sigma
    x = scheduler.add_noise(clean, ops.from_numpy(host, dtype=dtype), scheduler.timesteps[1:2])
    outputs = [ops.to_numpy(x)]
    for t in scheduler.timesteps[1:]:
        scaled = scheduler.scale_model_input(x, t)
        model_output = ops.from_numpy(_host_model(ops.to_numpy(scaled), t), like=x, dtype=dtype)
        out = scheduler.step(model_output, t, x, generator=generator, **step_kwargs)
        assert ops.is_tensor(out.prev_sample) and ops.dtype_name(out.prev_sample) == dtype
        outputs += [ops.to_numpy(scaled), ops.to_numpy(out[0]), ops.to_numpy(out[1])]
        x = out.prev_sample
    return outputs


def _backend_cases():
    for prediction, spacing in itertools.product(("epsilon", "v_prediction", "sample"), ("linspace", "trailing")):
        config = dict(prediction_type=prediction, timestep_spacing=spacing, beta_schedule="scaled_linear")
        yield EulerDiscreteScheduler, config, {}
        yield EulerDiscreteScheduler, dict(config, use_karras_sigmas=True), dict(s_churn=1.0)
        yield EulerAncestralDiscreteScheduler, config, {}


@pytest.mark.parity
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backends_match_numpy_bitwise(backend):
    for (cls, config, step_kwargs), dtype in itertools.product(_backend_cases(), ("float32", "float16")):
        reference, other = (_backend_loop(b, cls, config, step_kwargs, dtype) for b in ("numpy", backend))
        assert_bitwise_equal(reference, other, f"{backend} vs numpy: {cls.__name__} {config} {dtype}")


# ---------------------------------------------------------------------------------------------
# step index, add_noise, timesteps of any type


@pytest.mark.torch
def test_step_index_begin_index_and_add_noise_follow_diffusers():
    import diffusers
    import torch

    for cls, name in ((EulerDiscreteScheduler, "EulerDiscreteScheduler"), (EulerAncestralDiscreteScheduler, "EulerAncestralDiscreteScheduler")):
        ours, ref = cls(timestep_spacing="linspace"), getattr(diffusers, name)(timestep_spacing="linspace")
        ours.set_timesteps(7, device="cpu")
        ref.set_timesteps(7, device="cpu")
        assert isinstance(ours.timesteps, torch.Tensor) and ours.timesteps.dtype == torch.float32
        assert not float(ours.timesteps[1]).is_integer()  # linspace: fractional timesteps, kept
        assert torch.equal(ours.init_noise_sigma, ref.init_noise_sigma)
        x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
        timesteps = ref.timesteps[[2, 4]]
        # no begin index: each timestep's own sigma (one per batch item)
        assert torch.equal(ours.add_noise(x0, noise, timesteps), ref.add_noise(x0, noise, timesteps))
        ours.set_begin_index(3)
        ref.set_begin_index(3)
        assert torch.equal(ours.add_noise(x0, noise, ref.timesteps[3:4]), ref.add_noise(x0, noise, ref.timesteps[3:4]))
        t = ref.timesteps[3]
        a = ours.step(x0, t, x0, generator=torch.Generator().manual_seed(2))
        b = ref.step(x0, t, x0, generator=torch.Generator().manual_seed(2))
        assert ours.step_index == ref.step_index == 4
        assert _rel(a.prev_sample, b.prev_sample, float(b.prev_sample.abs().max())) <= 1e-6
        # after the first step add_noise uses the running step index (inpainting)
        assert torch.equal(ours.add_noise(x0, noise, ref.timesteps[:1]), ref.add_noise(x0, noise, ref.timesteps[:1]))
        # a repeated timestep: the second match, as diffusers
        schedule = torch.tensor([999.0, 500.0, 500.0, 10.0])
        assert ours.index_for_timestep(500.0, schedule) == ref.index_for_timestep(torch.tensor(500.0), schedule) == 2
        # any scalar type names the same step; an integer too (diffusers refuses ints)
        for t in (999.0, np.float32(999.0), torch.tensor(999.0), torch.tensor([999.0]), np.array([999.0]), 999):
            fresh = cls()
            fresh.set_timesteps(4)
            fresh.step(x0, t, x0, generator=torch.Generator().manual_seed(0))
            assert fresh.step_index == 1
        with pytest.raises(ValueError, match="is not in the scheduler's timesteps"):
            fresh = cls()
            fresh.set_timesteps(4)
            fresh.step(x0, 998.5, x0)
        fresh = cls()
        fresh.set_timesteps(2)
        for t in fresh.timesteps:
            fresh.step(x0, t, x0, generator=torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="have been taken"):
            fresh.step(x0, fresh.timesteps[-1], x0)


def test_numpy_views_outputs_and_float16_dtypes():
    scheduler = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(4)
    assert isinstance(scheduler.timesteps, np.ndarray) and scheduler.timesteps.dtype == np.float32
    assert scheduler.timesteps.tolist() == [751.0, 501.0, 251.0, 1.0]
    assert isinstance(scheduler.sigmas, np.ndarray) and len(scheduler.sigmas) == 5 and scheduler.sigmas[-1] == 0
    sigma = scheduler.init_noise_sigma
    assert type(sigma) is not np.float32 and sigma.cpu() == sigma.item() == float(sigma)
    assert sigma == pytest.approx(np.sqrt(scheduler.sigmas[0] ** 2 + 1), rel=1e-7)  # leading: sqrt(max^2 + 1)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    assert (x * sigma).dtype == np.float16
    out = scheduler.step(x, scheduler.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].dtype == np.float16 and out[1].dtype == np.float32
    assert scheduler.scale_model_input(x, scheduler.timesteps[1]).dtype == np.float16
    assert scheduler.order == 1 and len(scheduler) == 1000
    assert {c.__name__ for c in scheduler.compatibles} >= {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"}


# ---------------------------------------------------------------------------------------------
# inside diffusers' pipeline, and saved with it


@pytest.mark.torch
@pytest.mark.parametrize("cls, config", [
    (EulerDiscreteScheduler, dict(timestep_spacing="trailing", use_karras_sigmas=True, final_sigmas_type="sigma_min")),
    (EulerAncestralDiscreteScheduler, dict(timestep_spacing="trailing")),
])
def test_diffusers_pipeline_gives_diffusers_image_and_saves_diffusers_scheduler(tmp_path, cls, config):
    import diffusers
    import torch

    from fewstep.backends.scheduler_interop import diffusers_class
    from fewstep.testing import tiny_pipeline

    kwargs = dict(prompt="a red fox", num_inference_steps=4, guidance_scale=0.0, output_type="np", height=64, width=64)
    ours = diffusers_class(cls).from_config(
        diffusers.StableDiffusionPipeline.load_config(tiny_pipeline("sd15"), subfolder="scheduler"), **config)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=ours)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(generator=torch.manual_seed(2), **kwargs).images
    pipe.scheduler = getattr(diffusers, cls.__name__).from_config(ours.config)
    reference = pipe(generator=torch.manual_seed(2), **kwargs).images
    assert np.abs(image - reference).max() <= 1e-4
    pipe.scheduler = ours
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == ["diffusers", cls.__name__]
    reloaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded.scheduler) is getattr(diffusers, cls.__name__)
    again = cls.from_pretrained(tmp_path, subfolder="scheduler")
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert reloaded.scheduler.config[key] == value and again.config[key] == value, key
