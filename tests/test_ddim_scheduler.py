"""fewstep's DDIMScheduler against diffusers' (issue 27), and LCM's NitroFusion timestep shift against its card.

Numbers are judged as tests/test_schedulers_vs_diffusers.py judges TCD / LCM (its helpers are reused):
timesteps identical; float64 loops within 1e-12 of diffusers' maths run in float64 ("oracle"); float32 and
float16 steps, teacher-forced along diffusers' trajectory, no further from the oracle than diffusers' own
step is (plus one unit of rounding at that precision); NumPy, torch and MindSpore inputs bitwise equal.
"""

import itertools
import json

import numpy as np
import pytest

import fewstep
from fewstep.core.schedulers.ddim import DDIMScheduler
from test_scheduler_parity import _loop  # the loop TCD and LCM are compared across backends with
from test_schedulers_vs_diffusers import _Failures, _initial_sample, _model, _rel

SPACINGS = ("leading", "trailing", "linspace")
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
SHAPE = (2, 4, 8, 8)
# One unit of rounding of the tensor arithmetic, relative to the step's scale (see _run_teacher_forced).
UNIT = {"float32": 1e-6, "float16": 2.0**-10}


def _torch():
    import torch

    return torch


def _diffusers_ddim(**config):
    from diffusers import DDIMScheduler as Reference

    return Reference(**config)


def _oracle(config, table=None):
    """diffusers' DDIMScheduler computing in float64: its float32 tables (or `table`) upcast exactly."""
    torch = _torch()
    oracle = _diffusers_ddim(**config)
    source = oracle.alphas_cumprod.numpy() if table is None else np.asarray(table, dtype=np.float32)
    oracle.alphas_cumprod = torch.from_numpy(source.astype(np.float64))
    final = 1.0 if config.get("set_alpha_to_one", True) else float(source[0])
    oracle.final_alpha_cumprod = torch.tensor(final, dtype=torch.float64)
    return oracle


def _random_configs(count, seed):
    """(config, num_inference_steps, step kwargs, dtype) over every option, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        prediction = str(rng.choice(PREDICTIONS))
        config = dict(
            beta_schedule=str(rng.choice(SCHEDULES)),
            prediction_type=prediction,
            timestep_spacing=str(rng.choice(SPACINGS)),
            clip_sample=bool(rng.integers(2)),
            clip_sample_range=float(rng.choice([1.0, 0.5, 2.0])),
            set_alpha_to_one=bool(rng.integers(2)),
            steps_offset=int(rng.integers(2)),
            rescale_betas_zero_snr=bool(prediction != "epsilon" and rng.random() < 0.3),
        )
        if config["beta_schedule"] != "scaled_linear":
            config.update(beta_start=0.0001, beta_end=0.02)
        else:
            config.update(beta_start=0.00085, beta_end=0.012)
        if rng.random() < 0.2:
            config.update(thresholding=True, dynamic_thresholding_ratio=float(rng.choice([0.9, 0.995])),
                          sample_max_value=float(rng.choice([1.5, 3.0])))
        steps = int(rng.choice([1, 2, 3, 4, 8])) if rng.random() < 0.6 else int(rng.integers(5, 51))
        step_kwargs = dict(eta=float(rng.choice([0.0, 0.0, 0.3, 1.0])),
                           use_clipped_model_output=bool(rng.random() < 0.3))
        yield config, steps, step_kwargs, str(rng.choice(["float32", "float32", "float16"]))


def _table(config):
    """diffusers' rescale_zero_terminal_snr runs in torch, whose sqrt may differ in the last bit from fewstep's
    (compared in test_schedules.py); the step maths is compared on one table, fewstep's."""
    return DDIMScheduler(**config).alphas_cumprod if config.get("rescale_betas_zero_snr") else None


def _run_teacher_forced(config, steps, step_kwargs, dtype, failures):
    """Each step gets diffusers' sample; fewstep (torch.Generator noise) against diffusers (the same generator)
    and the float64 oracle (the same noise, passed as variance_noise)."""
    torch = _torch()
    table = _table(config)
    ours, ref, oracle = DDIMScheduler(**config), _diffusers_ddim(**config), _oracle(config, table)
    unclipped = _oracle(dict(config, clip_sample=False, thresholding=False), table)
    if table is not None:
        ref.alphas_cumprod = torch.from_numpy(np.asarray(table, dtype=np.float32))
        if not config["set_alpha_to_one"]:
            ref.final_alpha_cumprod = ref.alphas_cumprod[0]
    for scheduler in (ours, ref, oracle, unclipped):
        scheduler.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    torch_dtype = getattr(torch, dtype)
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    x = _initial_sample().to(torch_dtype)
    for t in ref.timesteps:
        m = _model(x, t).to(torch_dtype)
        o_ours = ours.step(m, t, x, generator=gens[0], **step_kwargs)
        o_ref = ref.step(m, t, x, generator=gens[1], **step_kwargs)
        noise = torch.randn(m.shape, generator=gens[2], dtype=torch_dtype).double()  # diffusers' randn_tensor draw
        o_orc = oracle.step(m.double(), int(t), x.double(), variance_noise=noise, **step_kwargs)
        if torch.isnan(o_orc.prev_sample).any():
            o_orc = _direction_rounded_below_zero(oracle, o_orc, int(t), noise, step_kwargs)
        # The largest term of the step: x0 before clipping (e.g. 14 x_t at t=979 of SD's schedule), whose rounding
        # at the tensors' precision the clipped outputs inherit.
        raw_x0 = unclipped.step(m.double(), int(t), x.double(), variance_noise=noise, **step_kwargs)[1]
        # float16 keeps 11 bits, so the rounding of the largest intermediate term dominates both libraries' error:
        # x_t / sqrt(a_t) in x0 of an epsilon model (x_t / sqrt(1 - a_t) in eps of an x0 model), which the two
        # libraries form in different orders; a unit of float16 rounding is relative to it.
        a_t = float(oracle.alphas_cumprod[int(t)])
        gain = {"epsilon": lambda: a_t**-0.5, "sample": lambda: (1 - a_t) ** -0.5, "v_prediction": lambda: 1.0}
        term = gain[config["prediction_type"]]() * max(float(x.abs().max()), float(m.abs().max())) \
            if dtype == "float16" else 0.0
        ref_nan = bool(torch.isnan(o_ref.prev_sample).any())
        if ref_nan:  # diffusers' own step rounded 1 - a_prev - sigma^2 below 0: only the oracle judges this step
            assert step_kwargs["eta"] == 1.0, (config, steps, step_kwargs, dtype, int(t))
        for k in (0, 1):
            assert isinstance(o_ours[k], torch.Tensor) and o_ours[k].dtype == torch_dtype
            # Relative to the largest of the output, the input sample and x0 before clipping: rounding of a linear
            # combination is relative to its terms, which are larger than the output where clipping shrinks x0.
            scale = max(float(o_orc[k].abs().max()), float(x.abs().max()), float(raw_x0.abs().max()), term)
            ours_error = _rel(o_ours[k], o_orc[k], scale)
            ref_error = 0.0 if ref_nan else _rel(o_ref[k], o_orc[k], scale)
            # fewstep forms its coefficients in float64, diffusers in float32: fewstep is within one unit of the
            # oracle where diffusers is, and never further than diffusers' own error plus one unit.
            failures.check(ours_error <= UNIT[dtype] + ref_error, "oracle", config, steps, step_kwargs, dtype,
                           int(t), k, ours_error, ref_error)
        x = (o_orc[0] if ref_nan else o_ref.prev_sample).to(torch_dtype)


def _direction_rounded_below_zero(oracle, output, t, noise, step_kwargs):
    """diffusers' step where 1 - a_prev - sigma^2 rounds below 0, which it then takes the square root of (NaN):
    for eta = 1 sigma^2 equals 1 - a_prev exactly when a_t / a_prev is 0 (the first step of a zero-terminal-SNR
    schedule) and to rounding when it is tiny. fewstep takes the term as 0 (README, deliberate differences), so
    the step is sqrt(a_prev) * x0 + sigma * z, evaluated here in float64 from the oracle's own x0 and sigma."""
    assert step_kwargs["eta"] == 1.0, f"diffusers' maths gives NaN at t={t} with eta={step_kwargs['eta']}"
    prev = t - oracle.config.num_train_timesteps // oracle.num_inference_steps
    a_prev = oracle.alphas_cumprod[prev] if prev >= 0 else oracle.final_alpha_cumprod
    x0 = output.pred_original_sample
    assert not x0.isnan().any()
    return (a_prev**0.5 * x0 + oracle._get_variance(t, prev) ** 0.5 * noise, x0)


def _run_float64(config, steps, step_kwargs, failures):
    """Free-running float64 loops: fewstep against diffusers' maths in float64, with the same noise."""
    torch = _torch()
    ours, oracle = DDIMScheduler(**config), _oracle(config, _table(config))
    ours.set_timesteps(steps)
    oracle.set_timesteps(steps)
    generator = torch.Generator().manual_seed(5)
    x_ours = x_ref = _initial_sample().double()
    for t in oracle.timesteps:
        noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        o_ours = ours.step(_model(x_ours, t), t, x_ours, variance_noise=noise, **step_kwargs)
        o_ref = oracle.step(_model(x_ref, t), int(t), x_ref, variance_noise=noise, **step_kwargs)
        if torch.isnan(o_ref.prev_sample).any():
            o_ref = _direction_rounded_below_zero(oracle, o_ref, int(t), noise, step_kwargs)
        for k in (0, 1):
            err = _rel(o_ours[k], o_ref[k], max(float(o_ref[k].abs().max()), 1e-300))
            failures.check(err <= 1e-12, "float64", config, steps, step_kwargs, int(t), k, err)
            assert o_ours[k].dtype == torch.float64
        x_ours, x_ref = o_ours.prev_sample, o_ref[0]


# ---------------------------------------------------------------------------------------------
# timesteps


@pytest.mark.torch
def test_timesteps_identical_to_diffusers_or_both_raise():
    raised = 0
    for T, spacing, offset, n in itertools.product((1000, 500, 100), SPACINGS, (0, 1, 3),
                                                   (1, 2, 3, 4, 6, 7, 8, 10, 26, 33, 50, 99, 100, 101, 500, 1000)):
        config = dict(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        ours, ref = DDIMScheduler(**config), _diffusers_ddim(**config)
        try:
            ref.set_timesteps(n)
            beyond = int(ref.timesteps.max()) >= T  # leading + steps_offset past the table: diffusers IndexErrors later
        except ValueError:
            beyond = True
        if beyond:
            raised += 1
            with pytest.raises(ValueError):
                ours.set_timesteps(n)
            assert ours.num_inference_steps is None  # a failed set_timesteps changes nothing
            continue
        ours.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        assert ours.timesteps.dtype == np.int64 and ours.num_inference_steps == ref.num_inference_steps == n
    assert raised > 0
    # The model cards' schedules, as published.
    expected = {("trailing", 4): [999, 749, 499, 249], ("trailing", 1): [999], ("trailing", 3): [999, 666, 332],
                ("leading", 4): [750, 500, 250, 0], ("linspace", 4): [999, 666, 333, 0]}
    for (spacing, n), values in expected.items():
        scheduler = DDIMScheduler(timestep_spacing=spacing)
        scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == values
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]  # diffusers' test_steps_offset


def test_invalid_arguments_raise_up_front_and_change_nothing():
    with pytest.raises(ValueError, match="^Unknown timestep_spacing 'karras'; use one of 'leading'"):
        DDIMScheduler(timestep_spacing="karras")
    with pytest.raises(ValueError, match="^rescale_betas_zero_snr=True makes"):
        DDIMScheduler(rescale_betas_zero_snr=True)
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(4)
    for n, message in ((0, "^`num_inference_steps` must be at least 1, got 0"),
                       (1001, "^`num_inference_steps`=1001 cannot exceed num_train_timesteps=1000"),
                       (2.5, "^`num_inference_steps` must be an integer, got 2.5")):
        with pytest.raises(ValueError, match=message):
            scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == [750, 500, 250, 0] and scheduler.num_inference_steps == 4
    x = np.ones(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="^eta must be a number >= 0, got -0.1"):
        scheduler.step(x, 750, x, eta=-0.1)
    with pytest.raises(ValueError, match="^Cannot pass both generator and variance_noise"):
        scheduler.step(x, 750, x, eta=0.5, generator=fewstep.Generator(0), variance_noise=x)
    with pytest.raises(ValueError, match="^eta=3.0 is too large for the step from timestep 750 to 500"):
        scheduler.step(x, 750, x, eta=3.0, generator=fewstep.Generator(0))
    assert scheduler.step_index is None  # no failed step moved the index
    with pytest.raises(ValueError, match=r"^The scheduler has no timesteps yet: call scheduler.set_timesteps"):
        DDIMScheduler().step(x, 999, x)


# ---------------------------------------------------------------------------------------------
# step outputs


@pytest.mark.torch
def test_random_configs_match_diffusers_within_its_own_error():
    failures = _Failures()
    for config, steps, step_kwargs, dtype in _random_configs(70, seed=27):
        _run_teacher_forced(config, steps, step_kwargs, dtype, failures)
    failures.assert_none()


@pytest.mark.torch
def test_random_configs_match_diffusers_maths_float64():
    failures = _Failures()
    for config, steps, step_kwargs, _ in _random_configs(50, seed=28):
        _run_float64(config, steps, step_kwargs, failures)
    failures.assert_none()


@pytest.mark.torch
def test_every_option_reaches_the_comparison():
    """The random draws cover each value of each option (so the two tests above test them all)."""
    drawn = list(_random_configs(70, seed=27))
    for key, values in (("beta_schedule", SCHEDULES), ("prediction_type", PREDICTIONS), ("timestep_spacing", SPACINGS),
                        ("clip_sample", (True, False)), ("set_alpha_to_one", (True, False)), ("steps_offset", (0, 1)),
                        ("rescale_betas_zero_snr", (True, False)), ("thresholding", (True,))):
        assert {c.get(key) for c, *_ in drawn} >= set(values), key
    assert {k["eta"] for _, _, k, _ in drawn} == {0.0, 0.3, 1.0}
    assert {k["use_clipped_model_output"] for _, _, k, _ in drawn} == {True, False}
    assert {d for *_, d in drawn} == {"float32", "float16"}


@pytest.mark.torch
def test_diffusers_published_full_loop_values_on_numpy():
    """diffusers' test_full_loop_no_noise / with_v_prediction / no_set_alpha_to_one numbers, on NumPy arrays."""
    n = 4 * 3 * 8 * 8
    for extra, expected_sum, expected_mean in ((dict(), 172.0067, 0.223967),
                                               (dict(prediction_type="v_prediction"), 52.5302, 0.0684),
                                               (dict(set_alpha_to_one=False, beta_start=0.01), 149.0784, 0.1941)):
        scheduler = DDIMScheduler(**{"beta_start": 0.0001, **extra})
        scheduler.set_timesteps(10)
        sample = (np.arange(n, dtype=np.float32).reshape(3, 8, 8, 4) / np.float32(n)).transpose(3, 0, 1, 2).copy()
        for t in scheduler.timesteps:
            model_output = sample * np.float32(t) / (np.float32(t) + np.float32(1.0))
            sample = scheduler.step(model_output, t, sample).prev_sample
        assert isinstance(sample, np.ndarray) and sample.dtype == np.float32
        assert abs(float(np.abs(sample).sum()) - expected_sum) < 1e-2
        assert abs(float(np.abs(sample).mean()) - expected_mean) < 1e-3


@pytest.mark.torch
def test_off_schedule_timesteps_variance_noise_and_outputs_like_diffusers():
    torch = _torch()
    ours, ref = DDIMScheduler(timestep_spacing="trailing"), _diffusers_ddim(timestep_spacing="trailing")
    ours.set_timesteps(3)
    ref.set_timesteps(3)
    x = _initial_sample()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    # 666 -> 333 (T // n), not to the schedule's 332; 17 is not in the schedule at all.
    for t in (666, 17, 999):
        a = ours.step(_model(x, t), t, x, eta=0.7, variance_noise=noise, return_dict=False)
        b = ref.step(_model(x, t), t, x, eta=0.7, variance_noise=noise, return_dict=False)
        assert isinstance(a, tuple) and len(a) == 2
        for k in (0, 1):
            assert _rel(a[k], b[k], float(x.abs().max())) < 1e-5  # 332 instead of 333 would be 1e-3 off
    assert ours._get_variance(420, 400) == pytest.approx(float(ref._get_variance(420, 400)), rel=1e-6)
    out = ours.step(_model(x, 999), 999, x)
    assert out.prev_sample is out[0] and list(out.keys()) == ["prev_sample", "pred_original_sample"]
    ours.set_timesteps(3)
    ours.step(_model(x, 17), 17, x)
    assert ours.step_index is None  # a first step off the schedule has no index to follow
    ours.set_timesteps(3)
    for i, t in enumerate(ours.timesteps):
        ours.step(_model(x, t), t, x)
        assert ours.step_index == i + 1


# ---------------------------------------------------------------------------------------------
# backends


def _backend_cases():
    for prediction, spacing in itertools.product(PREDICTIONS, SPACINGS):
        yield dict(prediction_type=prediction, timestep_spacing=spacing, clip_sample=False), 4, dict(eta=0.0)
        yield (dict(prediction_type=prediction, timestep_spacing=spacing), 3,
               dict(eta=0.5, use_clipped_model_output=True))
    yield dict(thresholding=True, sample_max_value=2.0, set_alpha_to_one=False), 4, dict(eta=1.0)
    zero_snr = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    yield zero_snr, 4, dict(eta=0.3)


# The backends a loop is run on besides NumPy (tests/test_euler_schedulers.py uses them too).
OTHER_BACKENDS = [pytest.param("torch", marks=pytest.mark.torch),
                  pytest.param("mindspore", marks=pytest.mark.mindspore)]


def assert_bitwise_equal(reference, other, label: str) -> None:
    """A loop's outputs on another backend equal NumPy's bit for bit: each op is one correctly rounded float32
    multiply, add, clip or division everywhere (tests/test_euler_schedulers.py uses it too)."""
    for i, (a, b) in enumerate(zip(reference, other)):
        np.testing.assert_array_equal(a, b, err_msg=f"{label} step {i}")


@pytest.mark.parity
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backends_match_numpy_bitwise(backend):
    for config, steps, step_kwargs in _backend_cases():
        reference, other = (_loop(b, DDIMScheduler, config, dict(num_inference_steps=steps), step_kwargs)
                            for b in ("numpy", backend))
        assert_bitwise_equal(reference, other, f"{backend} vs numpy: {config} {step_kwargs}")


# ---------------------------------------------------------------------------------------------
# in diffusers' own pipeline, and saved


@pytest.mark.torch
def test_in_diffusers_pipeline_saved_and_reloaded(tmp_path):
    import diffusers
    import torch

    from fewstep.backends.scheduler_interop import diffusers_class
    from fewstep.testing import tiny_pipeline

    # PCM's settings; eta > 0 so the pipeline's generator reaches the step
    ours = diffusers_class(DDIMScheduler)(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=ours)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red fox", num_inference_steps=2, guidance_scale=0.0, output_type="np", height=64,
                  width=64, eta=0.5)
    before = pipe(generator=torch.manual_seed(2), **kwargs).images
    pipe.scheduler = diffusers.DDIMScheduler.from_config(ours.config)
    reference = pipe(generator=torch.manual_seed(2), **kwargs).images
    assert np.abs(before - reference).max() <= 1e-5
    pipe.scheduler = ours
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDIMScheduler"]
    # reloaded, the pipeline holds diffusers' class with this config: the reference run above
    reloaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded.scheduler) is diffusers.DDIMScheduler
    again = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert reloaded.scheduler.config[key] == value and again.config[key] == value, key


@pytest.mark.torch
def test_save_pretrained_round_trip_and_diffusers_reads_it(tmp_path):
    from diffusers import DDIMScheduler as Reference

    ours = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                         timestep_spacing="trailing", rescale_betas_zero_snr=True)
    path = ours.save_pretrained(tmp_path)
    saved = json.loads(open(path).read())
    assert saved["_class_name"] == "DDIMScheduler" and "_use_default_values" not in saved
    again, ref = DDIMScheduler.from_pretrained(tmp_path), Reference.from_pretrained(tmp_path)
    init_keys = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert {k: again.config[k] for k in init_keys} == {k: ref.config[k] for k in init_keys} == init_keys
    np.testing.assert_array_equal(again.alphas_cumprod, ours.alphas_cumprod)
    for scheduler in (ours, again, ref):
        scheduler.set_timesteps(4)
    assert ours.timesteps.tolist() == again.timesteps.tolist() == ref.timesteps.tolist() == [999, 749, 499, 249]
    # diffusers' DDIM config (SD 1.5's defaults list) gives this class its own defaults, as in diffusers
    source = Reference(prediction_type="v_prediction").config
    assert {k: DDIMScheduler.from_config(source).config[k] for k in init_keys} == {k: source[k] for k in init_keys}
    # a saved pipeline's model_index.json names diffusers' module; the class stays fewstep's
    assert DDIMScheduler.__module__ == "fewstep.core.schedulers.ddim"
    assert ours.__module__ == "diffusers.schedulers.scheduling_ddim"


# ---------------------------------------------------------------------------------------------
# NitroFusion's timestep shift on LCM


def _card_class():
    """NitroFusion's `TimestepShiftLCMScheduler`, as its model card (github.com/ChenDarYen/NitroFusion,
    huggingface.co/ChenDY/NitroFusion) gives it; tests/test_recipes_pipelines.py uses it too."""
    from diffusers import LCMScheduler

    class TimestepShiftLCMScheduler(LCMScheduler):
        def __init__(self, *args, shifted_timestep=250, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_to_config(shifted_timestep=shifted_timestep)

        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            self.origin_timesteps = self.timesteps.clone()
            self.shifted_timesteps = (
                self.timesteps * self.config.shifted_timestep / self.config.num_train_timesteps
            ).long()
            self.timesteps = self.shifted_timesteps

        def step(self, model_output, timestep, sample, generator=None, return_dict=True):
            if self.step_index is None:
                self._init_step_index(timestep)
            self.timesteps = self.origin_timesteps
            output = super().step(model_output, timestep, sample, generator, return_dict)
            self.timesteps = self.shifted_timesteps
            return output

    return TimestepShiftLCMScheduler


@pytest.mark.torch
def test_lcm_shifted_timestep_equals_nitrofusions_card_class():
    torch = _torch()
    card = _card_class()
    failures = _Failures()
    for shift, set_kwargs in itertools.product(
        (250, 500, 1000, 333),
        (dict(num_inference_steps=1), dict(num_inference_steps=2), dict(num_inference_steps=4),
         dict(num_inference_steps=8), dict(timesteps=[999, 700, 400, 100]), dict(num_inference_steps=4, strength=0.5)),
    ):
        ours, ref = fewstep.LCMScheduler(shifted_timestep=shift), card(shifted_timestep=shift)
        ours.set_timesteps(**set_kwargs)
        ref.set_timesteps(**set_kwargs)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())  # what the UNet sees
        g_ours, g_ref = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        x = _initial_sample()
        for t in ref.timesteps:
            a = ours.step(_model(x, t), t, x, generator=g_ours)
            b = ref.step(_model(x, t), t, x, generator=g_ref)
            for k in (0, 1):
                err = _rel(a[k], b[k], max(float(b[k].abs().max()), float(x.abs().max())))
                failures.check(err <= 2e-6, shift, set_kwargs, int(t), k, err)
            x = b.prev_sample
        assert ours.step_index == ref.step_index == len(ref.timesteps)
    failures.assert_none()
    shifted = fewstep.LCMScheduler(shifted_timestep=250)
    shifted.set_timesteps(4)
    assert shifted.timesteps.tolist() == [249, 189, 124, 64]
    # the card's config carries the shift to fewstep's class
    assert fewstep.LCMScheduler.from_config(card().config).config["shifted_timestep"] == 250


@pytest.mark.torch
def test_lcm_default_config_is_diffusers_and_the_shift_round_trips(tmp_path):
    from diffusers import LCMScheduler as Reference

    plain = fewstep.LCMScheduler()
    assert "shifted_timestep" not in plain.config and "shifted_timestep" not in plain.config["_use_default_values"]
    assert {k: v for k, v in plain.config.items() if not k.startswith("_")} == \
        {k: v for k, v in Reference().config.items() if not k.startswith("_")}
    plain.set_timesteps(4)
    assert plain.timesteps.tolist() == [999, 759, 499, 259]
    shifted = fewstep.LCMScheduler(shifted_timestep=250, timestep_spacing="trailing")
    shifted.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["shifted_timestep"] == 250
    again = fewstep.LCMScheduler.from_pretrained(tmp_path)
    assert again.config["shifted_timestep"] == 250
    again.set_timesteps(2)
    assert again.timesteps.tolist() == [249, 124]
    with pytest.raises(ValueError, match="^shifted_timestep must be a positive integer"):
        fewstep.LCMScheduler(shifted_timestep=0)
    with pytest.raises(ValueError, match="^`shifted_timestep` must be an integer, got 2.5"):
        fewstep.LCMScheduler(shifted_timestep=2.5)
