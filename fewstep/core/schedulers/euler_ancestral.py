"""Euler-ancestral: an Euler step down to sigma_down, then fresh noise back up to sigma_{i+1}.

The ancestral sampler of k-diffusion (Crowson), Karras et al. (2022)'s Euler step combined with the DDPM
ancestral split of the noise level: going from sigma to sigma_next, the step removes more noise than it
should (to sigma_down) and adds independent noise of scale sigma_up, with sigma_down^2 + sigma_up^2 =
sigma_next^2:

    sigma_up   = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x0         from the model output: epsilon x - sigma * m, sample m,
               v_prediction x / (sigma^2 + 1) - m * sigma / sqrt(sigma^2 + 1)
    x_next     = x + (x - x0) / sigma * (sigma_down - sigma) + sigma_up * z

x0 and the deterministic part are linear in (x, m): two linear combinations with Python-float coefficients
formed once in float64 from the float32 sigmas, plus the noise term. As in diffusers, noise is drawn on
every step (the last one too, where sigma_up = 0 and it is not added), so a generator advances the same way
and SD-Turbo gives the same image on every framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from fewstep.core.noise import randn_like
from fewstep.core.registry import backend_of
from fewstep.core.schedulers.config import records_config
from fewstep.core.schedulers.euler import combine
from fewstep.core.schedulers.parameterisation import Linear, cached
from fewstep.core.schedulers.scheduler import StepOutput, schedule_docstring
from fewstep.core.schedulers.sigmas import (TIMESTEP_SPACINGS, ZERO_SNR_DESCRIPTION, SigmaScheduler, check_choice,
                                            euler_ancestral_plan)


@dataclass
class EulerAncestralDiscreteSchedulerOutput(StepOutput):
    """`prev_sample`: input of the next step. `pred_original_sample`: the model's clean estimate x0."""

    prev_sample: Any
    pred_original_sample: Any = None


class EulerAncestralCoefficients(NamedTuple):
    """x0 = x0.sample * x + x0.model * m; x_next = prev.sample * x + prev.model * m + noise * z."""

    x0: Linear
    prev: Linear
    noise: float


def ancestral_sigmas(sigma: float, sigma_next: float) -> Tuple[float, float]:
    """(sigma_up, sigma_down) of the step from sigma to sigma_next, in float64."""
    s, nxt = np.float64(sigma), np.float64(sigma_next)
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.sqrt(nxt**2 * (s**2 - nxt**2) / s**2)
        down = np.sqrt(nxt**2 - up**2)
    return float(up), float(down)


def euler_ancestral_coefficients(sigma: float, sigma_next: float, prediction_type: str) -> EulerAncestralCoefficients:
    """The step's coefficients in float64 (inf/NaN where sigma = 0, as the reference's arithmetic)."""
    up, down = ancestral_sigmas(sigma, sigma_next)
    s = np.float64(sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        dt = down - s
        if prediction_type == "epsilon":
            x0, prev = (1.0, -s), (1.0, dt)
        else:
            ratio = down / s  # 1 + dt / s, so the coefficients below have no cancellation
            if prediction_type == "sample":
                x0, prev = (0.0, 1.0), (ratio, 1.0 - ratio)
            else:  # v_prediction: 1 + (1 - a) dt / s and -b dt / s
                a, b = 1.0 / (s * s + 1.0), -s / np.sqrt(s * s + 1.0)
                x0, prev = (a, b), (a + (1.0 - a) * ratio, b * (1.0 - ratio))
    return EulerAncestralCoefficients(Linear(float(x0[0]), float(x0[1])), Linear(float(prev[0]), float(prev[1])), up)


def _apply(ops, model_output, sample, c: EulerAncestralCoefficients, generator, prediction_type: str):
    """(x_next, x0) as tensors, in float32 for float32 and lower precisions and float64 for float64, x_next in
    the model output's dtype (as diffusers)."""
    out_dtype = ops.dtype_name(model_output)
    work = "float64" if "float64" in (ops.dtype_name(sample), out_dtype) else "float32"
    x, m = ops.cast(sample, work), ops.cast(model_output, work)
    # drawn in the model output's dtype as diffusers' randn_tensor, before anything else can fail
    z = randn_like(ops, ops.shape(model_output), out_dtype, generator, like=model_output)
    prev = combine(x, c.prev.sample, m, c.prev.model)
    if c.noise != 0.0:
        z = ops.cast(z, work)
        z *= c.noise  # in place: the draw is this step's own tensor (one allocation less)
        prev += z
    x0 = model_output if prediction_type == "sample" else combine(x, c.x0.sample, m, c.x0.model)
    return ops.cast(prev, out_dtype), x0


def euler_ancestral_step(model_output: Any, sample: Any, *, sigmas: List[float], step_index: int,
                         prediction_type: str = "epsilon", generator: Any = None,
                         coefficient_cache: Optional[dict] = None) -> Tuple[Any, Any]:
    """One Euler-ancestral step with the step index given explicitly (no scheduler state);
    `EulerAncestralDiscreteScheduler.step` is this.

    Args:
        model_output, sample: the UNet's output for the (scaled) `sample`, and the unscaled sample x.
        sigmas: the sigma schedule (float32 values); the step goes from sigmas[step_index] to
            sigmas[step_index + 1].
        step_index: this step's position.
        prediction_type: "epsilon", "v_prediction" or "sample".
        generator: the noise source (see `EulerAncestralDiscreteScheduler.step`).
        coefficient_cache: a dict in which coefficients are memoised across calls (a scheduler's).

    Returns (prev_sample, pred_original_sample)."""
    sigma, sigma_next = sigmas[step_index], sigmas[step_index + 1]
    coefficients = cached(coefficient_cache, ("euler_ancestral", sigma, sigma_next, prediction_type),
                          lambda: euler_ancestral_coefficients(sigma, sigma_next, prediction_type))
    ops = backend_of(model_output, sample)
    return _apply(ops, model_output, sample, coefficients, generator, prediction_type)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler-ancestral sampler with diffusers' `EulerAncestralDiscreteScheduler` interface and numbers, on
    NumPy, torch or MindSpore tensors (SD-Turbo / SDXL-Turbo use it with trailing spacing).

    Constructor arguments and defaults are diffusers'. Differences: invalid configs raise ValueError at
    construction; prediction_type="sample" is supported (x0 = the model output; diffusers raises
    NotImplementedError at the step); `timestep` may be any number of the schedule, integers included;
    timesteps and sigmas are NumPy arrays without a device; `get_velocity` takes training timesteps."""

    _saved_as_module = "diffusers.schedulers.scheduling_euler_ancestral_discrete"
    _initial_timestep_dtype = "float64"  # diffusers' schedule before set_timesteps (float32 after it)

    @records_config
    @schedule_docstring(rescale_betas_zero_snr=ZERO_SNR_DESCRIPTION)
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        """Build a scheduler; arguments and defaults are diffusers' EulerAncestralDiscreteScheduler's.

        Args:
            {schedule_arguments}

        Raises ValueError for an invalid config, before anything is built."""
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._build_sigma_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                 prediction_type, rescale_betas_zero_snr)

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Choose the inference timesteps and sigmas (run before the denoising loop).

        Args:
            num_inference_steps (`int`):
                How many steps, spaced by the config's timestep_spacing.
            device (`str` or `torch.device`, *optional*):
                Where `timesteps` and `sigmas` should live. None keeps them NumPy float32 arrays; a device of an
                imported framework makes them float32 tensors there, as diffusers' pipelines expect.

        Raises ValueError (and changes nothing) for an invalid step count."""
        plan = euler_ancestral_plan(self.config, self.alphas_cumprod, num_inference_steps)
        self._apply_plan(plan, device)

    def step(self, model_output: Any, timestep: Any, sample: Any, generator: Any = None, return_dict: bool = True):
        """Advance one step: the stateless `euler_ancestral_step` with this scheduler's sigmas and step index.

        Args:
            model_output (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The UNet's output for `scale_model_input(sample, timestep)`.
            timestep (`float` or a one-element tensor):
                The current timestep, an element of `timesteps` (read only to find the first step's index).
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The current (unscaled) sample, of model_output's framework.
            generator (*optional*):
                Noise source, drawn on every step: a `fewstep.Generator`, `np.random.Generator`,
                `torch.Generator` (drawn as diffusers draws), a list of them (one per batch item), or None.
            return_dict (`bool`, *optional*, defaults to True):
                False returns the tuple (prev_sample, pred_original_sample).

        Returns:
            `EulerAncestralDiscreteSchedulerOutput(prev_sample, pred_original_sample)` (or the tuple):
            prev_sample of the model output's type and dtype, pred_original_sample in float32 (float64 for
            float64 inputs)."""
        index = self._current_index(timestep)
        prev_sample, x0 = euler_ancestral_step(
            model_output, sample, sigmas=self._sigma_list, step_index=index,
            prediction_type=self.config["prediction_type"], generator=generator,
            coefficient_cache=self._coefficient_cache,
        )
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, x0
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
