"""LCM: multistep consistency sampling for Latent Consistency Models.

Luo et al. (2023), "Latent Consistency Models", arXiv 2310.04378, Alg. 1 (after Song et al. 2023,
"Consistency Models", Alg. 1). The consistency function maps x_t straight to a clean estimate,

    x0       from the model output (epsilon / sample / v parameterisation), then clip or threshold
    denoised = c_out(t) * x0 + c_skip(t) * x_t          (boundary condition: f(x, 0) = x)
    x_prev   = sqrt(a_prev) * denoised + sqrt(1 - a_prev) * z      on every step but the last
    x_prev   = denoised                                            on the last step

with a = alphas_cumprod and the scalings evaluated at the discrete timestep times timestep_scaling
(LCM paper eq. 7 with sigma_data = 0.5). Away from t = 0, c_skip ~ 0 and c_out ~ 1, so `denoised`
is essentially x0. Without clip/thresholding, denoised is linear in (sample, model_output), so a step
is two linear combinations with Python-float coefficients computed once in float64.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from fewstep.core.noise import randn_like
from fewstep.core.registry import backend_of
from fewstep.core.schedulers.config import SchedulerConfig, records_config
from fewstep.core.schedulers.parameterisation import (Linear, cached, dynamic_threshold, linear_combination,
                                                      step_options, x0_and_eps_coefficients)
from fewstep.core.schedulers.scheduler import ConsistencyScheduler, StepOutput, step_docstring
from fewstep.core.schedulers.timesteps import as_int, shift_timesteps, step_position

SIGMA_DATA = 0.5  # the data standard deviation the consistency parameterisation assumes


@dataclass
class LCMSchedulerOutput(StepOutput):
    """`prev_sample`: input of the next step. `denoised`: the clean estimate (decode it after the last step)."""

    prev_sample: Any
    denoised: Any = None


class LCMCoefficients(NamedTuple):
    """x0 = x0 (of sample, model_output); denoised = c_out * x0 + c_skip * sample, which without clipping is
    the linear `denoised` (of sample, model_output); x_prev = prev_denoised * denoised + prev_noise * z."""

    x0: Linear
    c_skip: float
    c_out: float
    denoised: Linear
    prev_denoised: float
    prev_noise: float


def boundary_condition_scalings(timestep: float, timestep_scaling: float = 10.0) -> Tuple[float, float]:
    """(c_skip, c_out) of the consistency parameterisation f(x, t) = c_skip(t) x + c_out(t) F(x, t).

    c_skip = sd^2 / (u^2 + sd^2), c_out = u / sqrt(u^2 + sd^2) with u = t * timestep_scaling, so that
    f(x, 0) = x exactly and the skip term vanishes quickly for t > 0 (t=999: c_skip = 2.5e-9)."""
    u = timestep * timestep_scaling
    c_skip = SIGMA_DATA**2 / (u**2 + SIGMA_DATA**2)
    c_out = u / math.sqrt(u**2 + SIGMA_DATA**2)
    return c_skip, c_out


def lcm_coefficients(
    alphas_cumprod: Sequence[float],
    timestep: int,
    prev_timestep: int,
    prediction_type: str = "epsilon",
    timestep_scaling: float = 10.0,
    add_noise: bool = True,
) -> LCMCoefficients:
    """The step's coefficients in float64 (prev_denoised = 1.0, prev_noise = 0.0 without noise)."""
    x0, _ = x0_and_eps_coefficients(float(alphas_cumprod[timestep]), prediction_type)
    c_skip, c_out = boundary_condition_scalings(float(timestep), timestep_scaling)
    denoised = Linear(c_out * x0.sample + c_skip, c_out * x0.model)
    if not add_noise:
        return LCMCoefficients(x0, c_skip, c_out, denoised, 1.0, 0.0)
    alpha_prev = np.float64(alphas_cumprod[prev_timestep])
    return LCMCoefficients(x0, c_skip, c_out, denoised, float(np.sqrt(alpha_prev)), float(np.sqrt(1.0 - alpha_prev)))


def _apply(ops, model_output, sample, c: LCMCoefficients, noisy: bool, generator, options) -> Tuple[Any, Any]:
    """denoised and x_prev as tensors."""
    if options["thresholding"]:
        x0 = linear_combination(sample, c.x0.sample, model_output, c.x0.model)
        x0 = dynamic_threshold(ops, x0, options["dynamic_thresholding_ratio"], options["sample_max_value"])
        denoised = linear_combination(x0, c.c_out, sample, c.c_skip)
    elif options["clip_sample"]:
        bound = float(options["clip_sample_range"])
        x0 = ops.clip(linear_combination(sample, c.x0.sample, model_output, c.x0.model), -bound, bound)
        denoised = linear_combination(x0, c.c_out, sample, c.c_skip)
    else:
        denoised = linear_combination(sample, c.denoised.sample, model_output, c.denoised.model)
    if not noisy:
        return denoised, denoised
    noise = randn_like(ops, ops.shape(model_output), ops.dtype_name(denoised), generator, like=sample)
    return linear_combination(denoised, c.prev_denoised, noise, c.prev_noise), denoised


_DEFAULT_OPTIONS = {
    "thresholding": False,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


def lcm_step(model_output: Any, timestep: int, sample: Any, *, timesteps: Sequence[int], step_index: int,
             alphas_cumprod: Sequence[float], prediction_type: str = "epsilon", timestep_scaling: float = 10.0,
             generator: Any = None, num_inference_steps: Optional[int] = None,
             coefficient_cache: Optional[dict] = None, **options) -> Tuple[Any, Any]:
    """One LCM step with the step index given explicitly (no scheduler state); `LCMScheduler.step` is this.

    Args:
        model_output, timestep, sample: the UNet's output at `timestep` for the noisy `sample`.
        timesteps: the schedule; the step goes from timesteps[step_index] to timesteps[step_index + 1].
        step_index: the index of `timestep` in the schedule.
        alphas_cumprod: the training schedule's cumulative alphas.
        prediction_type: "epsilon", "sample" or "v_prediction".
        timestep_scaling: scales the timestep in the boundary-condition scalings.
        generator: the noise source (see `LCMScheduler.step`).
        num_inference_steps: defaults to len(timesteps); the step at index num_inference_steps - 1 is the
            last one and draws no noise.
        coefficient_cache: a dict in which coefficients are memoised across calls (a scheduler's).
        options: the config's clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
            sample_max_value.

    Returns (prev_sample, denoised)."""
    options = step_options(options, _DEFAULT_OPTIONS, "LCM")
    t, prev, last = step_position(timesteps, step_index, timestep, num_inference_steps)
    prev_t = t if prev is None else prev  # the last step draws no noise, so its target is never used
    noisy = not last
    scaling = float(timestep_scaling)
    coefficients = cached(coefficient_cache, ("lcm", t, prev_t, noisy, prediction_type, scaling),
                          lambda: lcm_coefficients(alphas_cumprod, t, prev_t, prediction_type, scaling, noisy))
    ops = backend_of(model_output, sample)
    return _apply(ops, model_output, sample, coefficients, noisy, generator, options)


def _records_lcm_config(init):
    """`records_config` for `__init__(self, *args, shifted_timestep=None, **kwargs)`, which passes the rest on to
    `ConsistencyScheduler.__init__`: the signature is that one's (written once there) plus `shifted_timestep`, so
    `records_config`, `from_config` and `help()` see every argument by name. `shifted_timestep` stays out of the
    config while it is None: an unshifted LCM's config is then diffusers' LCMScheduler's key for key, and a folder
    saved from it loads in diffusers without an unexpected key (from_config still passes a card's value on)."""
    base = inspect.signature(ConsistencyScheduler.__init__)
    own = inspect.signature(init).parameters["shifted_timestep"]  # keyword-only, as in NitroFusion's card class
    init.__signature__ = base.replace(parameters=[*base.parameters.values(), own])
    recorded = records_config(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        recorded(self, *args, **kwargs)
        config = dict(self._internal_dict)
        if config.get("shifted_timestep", None) is None:
            config.pop("shifted_timestep", None)
            defaults = [name for name in config.pop("_use_default_values", []) if name != "shifted_timestep"]
            if defaults:
                config["_use_default_values"] = defaults
            object.__setattr__(self, "_internal_dict", SchedulerConfig(config))

    return wrapper


class LCMScheduler(ConsistencyScheduler):
    """LCM sampler with diffusers' `LCMScheduler` interface and numbers, on NumPy, torch or MindSpore tensors.

    Constructor arguments and defaults are diffusers'. LCM (unlike TCD) applies clip_sample /
    thresholding to x0 and the boundary-condition scalings (timestep_scaling). Differences from
    diffusers: invalid configs and arguments raise ValueError up front; `timesteps` is a NumPy int64
    array; custom timesteps with strength < 1 set num_inference_steps to the kept length, so the last
    step returns `denoised` without re-noising it (see `set_timesteps`).

    `shifted_timestep` (off by default) is NitroFusion's timestep shift: the timesteps the UNet is shown are
    scaled by shifted_timestep / num_train_timesteps, as its model card's `TimestepShiftLCMScheduler` does."""

    _saved_as_module = "diffusers.schedulers.scheduling_lcm"

    @_records_lcm_config
    def __init__(self, *args, shifted_timestep: Optional[int] = None, **kwargs):
        """Build a scheduler; the arguments and defaults are diffusers' LCMScheduler's, plus NitroFusion's shift.

        Args:
            {consistency_arguments}
            shifted_timestep (`int`, *optional*):
                NitroFusion's timestep shift (its card uses 250): `timesteps`, what the UNet is shown, become
                int(t * shifted_timestep / num_train_timesteps); the step re-noises to the unshifted next timestep
                (4 steps: the UNet sees [249, 189, 124, 64], the noise levels follow [999, 759, 499, 259]). None (the
                default) shifts nothing and leaves the key out of the config, which then is diffusers' LCMScheduler's
                key for key.

        Raises ValueError as `ConsistencyScheduler.__init__` does, and for a shifted_timestep that is not a
        positive integer.
        """
        if shifted_timestep is not None and as_int(shifted_timestep, "shifted_timestep") < 1:
            raise ValueError(
                f"shifted_timestep must be a positive integer (NitroFusion uses 250), got {shifted_timestep!r}."
            )
        super().__init__(*args, **kwargs)  # records a config too, which this class's decorator then replaces

    def _set_timesteps_array(self, values: np.ndarray, anchor: Any = None) -> None:
        super()._set_timesteps_array(values, anchor)
        # A schedule set here (or assigned to `timesteps`) is the one the step follows, unless set_timesteps
        # shifts it below.
        self._unshifted_timesteps: Optional[List[int]] = None

    def _set_planned_timesteps(self, values: np.ndarray, anchor: Any) -> None:
        """With `shifted_timestep` in the config, `timesteps` (what the pipeline shows the UNet and passes back to
        `step`) are the shifted ones, and each step forms x0 and the boundary scalings at the timestep it is
        given but re-noises to the next *unshifted* timestep, exactly as NitroFusion's card class does in
        diffusers (4 steps: the UNet sees [249, 189, 124, 64], the noise levels follow [999, 759, 499, 259])."""
        shift = self.config.get("shifted_timestep")
        if shift is None:
            self._set_timesteps_array(values, anchor)
            return
        self._set_timesteps_array(shift_timesteps(values, shift, self.config["num_train_timesteps"]), anchor)
        self._unshifted_timesteps = values.tolist()

    @step_docstring
    def step(self, model_output: Any, timestep: Any, sample: Any, generator: Any = None, return_dict: bool = True):
        """Advance one timestep: the stateless `lcm_step` with this scheduler's schedule, step index and options.

        Args:
            {step_arguments}
            generator (*optional*):
                Noise source for every step but the last: a `fewstep.Generator`, `np.random.Generator`,
                `torch.Generator` (drawn as diffusers draws), a list of them, or None.
            return_dict (`bool`, *optional*, defaults to True):
                False returns the tuple (prev_sample, denoised).

        Returns:
            `LCMSchedulerOutput(prev_sample, denoised)` (or the tuple) of the input's type and dtype.
        """
        t, index = self._begin_step(timestep)
        config = self.config
        prev_sample, denoised = lcm_step(
            model_output, t, sample, step_index=index,
            timesteps=self._timestep_list if self._unshifted_timesteps is None else self._unshifted_timesteps,
            alphas_cumprod=self._alphas_cumprod_list, prediction_type=config["prediction_type"],
            timestep_scaling=config["timestep_scaling"], generator=generator,
            num_inference_steps=self.num_inference_steps, coefficient_cache=self._coefficient_cache,
            **{name: config[name] for name in _DEFAULT_OPTIONS},
        )
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)


def _consistency_arguments() -> str:
    """The Args entries of `ConsistencyScheduler.__init__`, which LCM's `__init__` shares (written once there)."""
    doc = ConsistencyScheduler.__init__.__doc__
    return doc[doc.index("Args:\n") + len("Args:\n"):doc.index("\n\n        Raises")].strip("\n").lstrip()


LCMScheduler.__init__.__doc__ = LCMScheduler.__init__.__doc__.replace("{consistency_arguments}",
                                                                      _consistency_arguments())
