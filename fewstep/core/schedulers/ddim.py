"""DDIM: denoising diffusion implicit models.

Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", arXiv 2010.02502, eq. 12 and 16. From
timestep t the model's prediction gives x0 and eps, and the step lands on the previous timestep
t_prev = t - T // n of the same trajectory (eta = 0), or of a noisier one (eta > 0):

    x0, eps  from the model output (epsilon / sample / v parameterisation); x0 clipped or thresholded
    sigma    = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))                   (eq. 16)
    x_prev   = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps  (+ sigma * z for eta > 0)

with a = alphas_cumprod, and a_prev = final_alpha_cumprod (1, or a_0 with set_alpha_to_one=False) once
t_prev < 0. eta = 0 is deterministic DDIM; eta = 1 is DDPM's ancestral step. `use_clipped_model_output`
re-derives eps from the clipped x0 (GLIDE). Without clipping or thresholding, x0 and x_prev are linear in
(sample, model_output): a step is two linear combinations with Python-float coefficients computed once in
float64 (`ddim_coefficients`), plus the noise term.

The previous timestep is t - T // n as diffusers computes it, not the next entry of the schedule: the two
differ for trailing and linspace spacings whose steps are not T // n apart (trailing, 3 of 1000: the
schedule is [999, 666, 332] and the step from 666 lands on 333), and the numbers follow diffusers'.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from fewstep.core.noise import randn_like
from fewstep.core.registry import backend_of, device_anchor
from fewstep.core.schedulers.config import records_config
from fewstep.core.schedulers.parameterisation import (Linear, cached, dynamic_threshold, linear_combination,
                                                      step_options, x0_and_eps_coefficients)
from fewstep.core.schedulers.scheduler import DiscreteScheduler, StepOutput, schedule_docstring, step_docstring
from fewstep.core.schedulers.timesteps import TIMESTEP_SPACINGS, index_for_timestep, spaced_timesteps, timestep_as_int


@dataclass
class DDIMSchedulerOutput(StepOutput):
    """`prev_sample`: input of the next step. `pred_original_sample`: the predicted x0 (clipped or thresholded
    as configured), a preview of the result."""

    prev_sample: Any
    pred_original_sample: Any = None


class DDIMCoefficients(NamedTuple):
    """x0 and eps as linear combinations of (sample, model_output); x_prev = prev_x0 * x0 + prev_eps * eps
    + noise * z, which without clipping is the linear `prev` of (sample, model_output). `eps_from_x0` re-derives
    eps from a (clipped) x0: eps = eps_from_x0.sample * sample + eps_from_x0.model * x0."""

    x0: Linear
    eps: Linear
    eps_from_x0: Linear
    prev_x0: float
    prev_eps: float
    noise: float
    prev: Linear


def ddim_variance(alpha_t: float, alpha_prev: float) -> float:
    """sigma_t^2 / eta^2 of DDIM eq. 16, (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), in float64."""
    a_t, a_prev = np.float64(alpha_t), np.float64(alpha_prev)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))


def ddim_coefficients(
    alphas_cumprod: Sequence[float],
    timestep: int,
    prev_timestep: int,
    final_alpha_cumprod: float,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
) -> DDIMCoefficients:
    """The step's coefficients in float64 from the float32 table (noise = 0.0 for eta = 0)."""
    alpha_t = float(alphas_cumprod[timestep])
    alpha_prev = float(alphas_cumprod[prev_timestep]) if prev_timestep >= 0 else float(final_alpha_cumprod)
    x0, eps = x0_and_eps_coefficients(alpha_t, prediction_type)
    variance = ddim_variance(alpha_t, alpha_prev)
    std = eta * float(np.sqrt(variance)) if eta > 0 else 0.0
    radicand = 1.0 - alpha_prev - std**2
    if radicand < 0.0:
        if eta <= 1.0:  # rounding: for eta <= 1, sigma^2 <= 1 - a_prev exactly
            radicand = 0.0
        else:
            raise ValueError(
                f"eta={eta} is too large for the step from timestep {timestep} to {prev_timestep}: the noise "
                f"(sigma^2 = {std**2:.4g}) exceeds 1 - alpha_prev = {1.0 - alpha_prev:.4g}. Use eta <= 1 (1 is DDPM)."
            )
    prev_x0, prev_eps = float(np.sqrt(np.float64(alpha_prev))), float(np.sqrt(radicand))
    with np.errstate(divide="ignore", invalid="ignore"):
        root_a, root_b = np.sqrt(np.float64(alpha_t)), np.sqrt(1.0 - np.float64(alpha_t))
        eps_from_x0 = Linear(float(1.0 / root_b), float(-root_a / root_b))
    prev = Linear(prev_x0 * x0.sample + prev_eps * eps.sample, prev_x0 * x0.model + prev_eps * eps.model)
    return DDIMCoefficients(x0, eps, eps_from_x0, prev_x0, prev_eps, std, prev)


def _check_eta(eta: Any) -> float:
    if type(eta) is float and eta >= 0.0:  # the common case, once per step: skip the ABC check
        return eta
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not eta >= 0.0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}: 0 is deterministic DDIM, 1 is DDPM's noise.")
    return float(eta)


_DEFAULT_OPTIONS = {
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


def _apply(ops, model_output, sample, c: DDIMCoefficients, use_clipped_model_output: bool, options):
    """x_prev (without its noise term) and x0 as tensors."""
    if not (options["thresholding"] or options["clip_sample"]):
        if use_clipped_model_output:  # nothing is clipped: eps re-derived from x0 is eps (diffusers' arithmetic)
            x0 = linear_combination(sample, c.x0.sample, model_output, c.x0.model)
            eps = linear_combination(sample, c.eps_from_x0.sample, x0, c.eps_from_x0.model)
            return linear_combination(x0, c.prev_x0, eps, c.prev_eps), x0
        x0 = linear_combination(sample, c.x0.sample, model_output, c.x0.model)
        return linear_combination(sample, c.prev.sample, model_output, c.prev.model), x0
    x0 = linear_combination(sample, c.x0.sample, model_output, c.x0.model)
    if options["thresholding"]:
        x0 = dynamic_threshold(ops, x0, options["dynamic_thresholding_ratio"], options["sample_max_value"])
    else:
        bound = float(options["clip_sample_range"])
        x0 = ops.clip(x0, -bound, bound)
    if use_clipped_model_output:
        eps = linear_combination(sample, c.eps_from_x0.sample, x0, c.eps_from_x0.model)
        return linear_combination(x0, c.prev_x0, eps, c.prev_eps), x0
    if c.eps.sample == 0.0:  # epsilon prediction: eps is the model output itself, as diffusers uses it
        return linear_combination(x0, c.prev_x0, model_output, c.prev_eps * c.eps.model), x0
    # eps folded into the combination: prev_eps * (eps.sample * sample + eps.model * model_output)
    direction = linear_combination(sample, c.prev_eps * c.eps.sample, model_output, c.prev_eps * c.eps.model)
    return x0 * c.prev_x0 + direction, x0


def ddim_step(model_output: Any, timestep: int, sample: Any, *, num_train_timesteps: int, num_inference_steps: int,
              alphas_cumprod: Sequence[float], final_alpha_cumprod: float = 1.0, prediction_type: str = "epsilon",
              eta: float = 0.0, use_clipped_model_output: bool = False, generator: Any = None,
              variance_noise: Any = None, coefficient_cache: Optional[dict] = None, **options) -> Tuple[Any, Any]:
    """One DDIM step with everything it depends on given explicitly (no scheduler state); `DDIMScheduler.step`
    is this.

    Args:
        model_output, timestep, sample: the UNet's output at `timestep` for the noisy `sample`.
        num_train_timesteps, num_inference_steps: the step goes from `timestep` to
            timestep - num_train_timesteps // num_inference_steps (diffusers' rule, whatever the spacing).
        alphas_cumprod: the training schedule's cumulative alphas.
        final_alpha_cumprod: alpha_prev once the previous timestep is below 0.
        prediction_type: "epsilon", "sample" or "v_prediction".
        eta: the weight of the noise, >= 0 (0: DDIM, 1: DDPM).
        use_clipped_model_output: re-derive eps from the clipped x0.
        generator: the noise source for eta > 0 (see `DDIMScheduler.step`).
        variance_noise: the noise itself instead of a generator (exclusive with it).
        coefficient_cache: a dict in which coefficients are memoised across calls (a scheduler's).
        options: the config's clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
            sample_max_value.

    Returns (prev_sample, pred_original_sample)."""
    options = step_options(options, _DEFAULT_OPTIONS, "DDIM")
    eta = _check_eta(eta)
    if eta > 0 and variance_noise is not None and generator is not None:
        raise ValueError(
            "Cannot pass both generator and variance_noise. Please make sure that either `generator` or "
            "`variance_noise` stays `None`."
        )
    t = int(timestep)
    prev_t = t - int(num_train_timesteps) // int(num_inference_steps)
    use_clipped = bool(use_clipped_model_output)
    c = cached(coefficient_cache, ("ddim", t, prev_t, eta, prediction_type, float(final_alpha_cumprod)),
               lambda: ddim_coefficients(alphas_cumprod, t, prev_t, final_alpha_cumprod, eta, prediction_type))
    ops = backend_of(model_output, sample)
    prev_sample, x0 = _apply(ops, model_output, sample, c, use_clipped, options)
    if eta > 0:
        if variance_noise is None:
            variance_noise = randn_like(ops, ops.shape(model_output), ops.dtype_name(model_output), generator,
                                        like=sample)
        prev_sample = prev_sample + variance_noise * c.noise
    return prev_sample, x0


class DDIMScheduler(DiscreteScheduler):
    """DDIM sampler with diffusers' `DDIMScheduler` interface and numbers, on NumPy, torch or MindSpore tensors.

    Constructor arguments and defaults are diffusers' (a linear 0.0001..0.02 schedule, clip_sample=True,
    timestep_spacing="leading"). Hyper-SD's N-step LoRAs use `timestep_spacing="trailing"`, PCM adds
    `clip_sample=False, set_alpha_to_one=False`. Differences from diffusers: invalid configs and arguments raise
    ValueError up front (unknown beta_schedule, prediction_type or timestep_spacing, zero-terminal SNR with
    epsilon prediction, a negative eta); `timesteps` is a NumPy int64 array unless `set_timesteps` names a device;
    `_get_variance` returns a Python float."""

    _saved_as_module = "diffusers.schedulers.scheduling_ddim"
    # diffusers' DDIMScheduler._compatibles (its KarrasDiffusionSchedulers): the fewstep classes of these names
    # load this config (`compatibles`).
    _compatibles = [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
    ]

    @records_config
    @schedule_docstring()
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        """Build a scheduler; arguments and defaults are diffusers' DDIMScheduler's.

        Args:
            {schedule_arguments}
            clip_sample (`bool`, *optional*, defaults to True):
                Clip the predicted x0 to [-clip_sample_range, clip_sample_range] (pixel-space models; latent models'
                configs set it False).
            set_alpha_to_one (`bool`, *optional*, defaults to True):
                alpha_prev of the step that lands below timestep 0: 1, or alphas_cumprod[0] when False.
            thresholding (`bool`, *optional*, defaults to False):
                Imagen's dynamic thresholding of the predicted x0 (instead of clip_sample).
            dynamic_thresholding_ratio (`float`, *optional*, defaults to 0.995):
                The quantile of |x0| dynamic thresholding clips at.
            clip_sample_range (`float`, *optional*, defaults to 1.0):
                The clipping bound.
            sample_max_value (`float`, *optional*, defaults to 1.0):
                The largest threshold dynamic thresholding uses.

        Raises ValueError for an unknown beta_schedule, prediction_type or timestep_spacing and for zero-terminal
        SNR with epsilon prediction, before anything is built.
        """
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; use one of "
                             f"{', '.join(map(repr, TIMESTEP_SPACINGS))} (few-step LoRAs use 'trailing').")
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                           rescale_betas_zero_snr, set_alpha_to_one)

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Choose the inference timesteps (run before the denoising loop), spaced as the config says.

        Args:
            num_inference_steps (`int`):
                How many steps, at most num_train_timesteps.
            device (`str` or `torch.device`, *optional*):
                Where `timesteps` should live. None keeps them a host NumPy int64 array; a `torch.device` (or a
                device string once torch is imported) makes them a torch int64 tensor there, as diffusers'
                pipelines expect.

        Raises ValueError (and changes nothing) for a step count below 1 or above num_train_timesteps, or a
        schedule that reaches past trained_betas (leading spacing with steps_offset can reach T).
        """
        config = self.config
        values = spaced_timesteps(config["num_train_timesteps"], num_inference_steps, config["timestep_spacing"],
                                  config["steps_offset"])
        self._check_within_betas(values)
        self._set_timesteps_array(values, device_anchor(device))
        self.num_inference_steps = int(num_inference_steps)
        self.custom_timesteps = False
        self._step_index = None
        self._begin_index = None

    def _get_variance(self, timestep: int, prev_timestep: int) -> float:
        """sigma_t^2 / eta^2 of the step from `timestep` to `prev_timestep` (final_alpha_cumprod below 0),
        as a Python float; diffusers' method of this name returns a 0-d torch tensor."""
        alphas = self._alphas_cumprod_list
        alpha_prev = alphas[prev_timestep] if prev_timestep >= 0 else float(self.final_alpha_cumprod)
        return ddim_variance(alphas[timestep], alpha_prev)

    def _index_of(self, t: int) -> Optional[int]:
        """The step index of a step at `t`: followed from the previous step, else the begin index, else t's
        position in the schedule; None for a timestep off the schedule (DDIM steps from any timestep)."""
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        return index_for_timestep(self._timestep_list, t) if t in self._timestep_list else None

    @step_docstring
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = True,
    ):
        """Advance one step: the stateless `ddim_step` with this scheduler's tables, step count and options.

        Args:
            {step_arguments}
            eta (`float`, *optional*, defaults to 0.0):
                The weight of the noise: 0 is deterministic DDIM, 1 is DDPM.
            use_clipped_model_output (`bool`, *optional*, defaults to False):
                Re-derive eps from the clipped x0 (GLIDE); no effect when nothing is clipped.
            generator (*optional*):
                Noise source for eta > 0: a `fewstep.Generator`, `np.random.Generator`, `torch.Generator` (drawn as
                diffusers draws), a list of them (one per batch item), or None.
            variance_noise (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`, *optional*):
                The noise for eta > 0 instead of drawing it (CycleDiffusion); exclusive with `generator`.
            return_dict (`bool`, *optional*, defaults to True):
                False returns the tuple (prev_sample, pred_original_sample).

        Returns:
            `DDIMSchedulerOutput(prev_sample, pred_original_sample)` (or the tuple) of the input's type and dtype.

        The timestep need not be in `timesteps` (as in diffusers, the step goes to t - T // num_inference_steps).
        """
        if self.num_inference_steps is None:
            raise ValueError(
                "The scheduler has no timesteps yet: call scheduler.set_timesteps(num_inference_steps) before step()."
            )
        t = timestep_as_int(timestep, len(self._alphas_cumprod_list))
        index = self._index_of(t)
        config = self.config
        prev_sample, x0 = ddim_step(
            model_output, t, sample, num_train_timesteps=config["num_train_timesteps"],
            num_inference_steps=self.num_inference_steps, alphas_cumprod=self._alphas_cumprod_list,
            final_alpha_cumprod=self.final_alpha_cumprod, prediction_type=config["prediction_type"], eta=eta,
            use_clipped_model_output=use_clipped_model_output, generator=generator, variance_noise=variance_noise,
            coefficient_cache=self._coefficient_cache, **{name: config[name] for name in _DEFAULT_OPTIONS},
        )
        self._step_index = None if index is None else index + 1
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
