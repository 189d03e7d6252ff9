"""Euler: the first-order ODE (optionally churned) sampler of Karras et al. (2022), Alg. 2.

Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv 2206.00364. In
sigma form x = x0 + sigma * eps, one step from sigma_i to sigma_{i+1}:

    gamma     = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0     (N = len(sigmas) - 1)
    sigma_hat = sigma_i * (1 + gamma);   x_hat = x + s_noise * sqrt(sigma_hat^2 - sigma_i^2) * z   (gamma > 0)
    x0        from the model output: epsilon x_hat - sigma_hat * m, sample m,
              v_prediction  x_hat / (sigma^2 + 1) - m * sigma / sqrt(sigma^2 + 1)
    x_next    = x_hat + (x_hat - x0) / sigma_hat * (sigma_{i+1} - sigma_hat)

x0 and x_next are linear in (x_hat, m), so a step is two linear combinations with Python-float coefficients
formed once in float64 from the float32 sigmas (`euler_coefficients`); for epsilon x_next = x_hat + dt * m
exactly. The UNet sees x / sqrt(sigma^2 + 1) (`SigmaScheduler.scale_model_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from fewstep.core.noise import randn_like
from fewstep.core.registry import backend_of
from fewstep.core.schedulers.config import records_config
from fewstep.core.schedulers.parameterisation import Linear, cached
from fewstep.core.schedulers.scheduler import StepOutput, schedule_docstring
from fewstep.core.schedulers.sigmas import (FINAL_SIGMAS_TYPES, INTERPOLATION_TYPES, TIMESTEP_SPACINGS,
                                            ZERO_SNR_DESCRIPTION, SigmaScheduler, check_choice, euler_plan,
                                            scipy_stats)


@dataclass
class EulerDiscreteSchedulerOutput(StepOutput):
    """`prev_sample`: input of the next step. `pred_original_sample`: the model's clean estimate x0."""

    prev_sample: Any
    pred_original_sample: Any = None


class EulerCoefficients(NamedTuple):
    """x_hat = sample + churn * z (churn 0: no noise); x0 = x0.sample * x_hat + x0.model * m;
    x_next = prev.sample * x_hat + prev.model * m."""

    churn: float
    x0: Linear
    prev: Linear


def churn_gamma(sigma: float, num_sigmas: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras' gamma_i: how far to raise the noise level before the step (0 unless s_churn > 0)."""
    if not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / (num_sigmas - 1), 2**0.5 - 1)


def euler_coefficients(sigma: float, sigma_next: float, prediction_type: str, gamma: float = 0.0,
                       s_noise: float = 1.0) -> EulerCoefficients:
    """The step's coefficients in float64 (inf/NaN where sigma_hat = 0, as the reference's arithmetic)."""
    s, nxt = np.float64(sigma), np.float64(sigma_next)
    with np.errstate(divide="ignore", invalid="ignore"):
        hat = s * (gamma + 1.0)
        churn = float(s_noise * np.sqrt(hat * hat - s * s)) if gamma > 0 else 0.0
        dt = nxt - hat
        if prediction_type == "epsilon":
            x0, prev = (1.0, -hat), (1.0, dt)
        elif prediction_type in ("sample", "original_sample"):
            ratio = nxt / hat
            x0, prev = (0.0, 1.0), (ratio, 1.0 - ratio)
        else:  # v_prediction: c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1), with the step's own sigma
            a, b = 1.0 / (s * s + 1.0), -s / np.sqrt(s * s + 1.0)
            ratio = nxt / hat  # 1 + (1 - a) dt / hat and -b dt / hat, written without cancellation
            x0, prev = (a, b), (a + (1.0 - a) * ratio, b * (1.0 - ratio))
    return EulerCoefficients(churn, Linear(float(x0[0]), float(x0[1])), Linear(float(prev[0]), float(prev[1])))


def combine(a: Any, ca: float, b: Any, cb: float) -> Any:
    """ca * a + cb * b as a new tensor, the sum formed in place on the one temporary (one allocation less than
    `a * ca + b * cb`, the same float rounding); ca == 1 and cb == 1 skip their multiplication (exact)."""
    if ca == 1.0:
        out = b * cb
        out += a
        return out
    out = a * ca
    out += b if cb == 1.0 else b * cb
    return out


def _apply(ops, model_output, sample, c: EulerCoefficients, generator, prediction_type: str):
    """(x_next, x0) as tensors: in float32 for float32 and lower precisions (as diffusers upcasts the sample),
    in float64 for float64; x_next in the model output's dtype, x0 in the working dtype (the model output
    itself for sample prediction), as diffusers returns them."""
    out_dtype = ops.dtype_name(model_output)
    work = "float64" if "float64" in (ops.dtype_name(sample), out_dtype) else "float32"
    x, m = ops.cast(sample, work), ops.cast(model_output, work)
    if c.churn:
        z = randn_like(ops, ops.shape(model_output), out_dtype, generator, like=model_output)
        x = combine(x, 1.0, ops.cast(z, work), c.churn)
    prev = combine(x, c.prev.sample, m, c.prev.model)
    x0 = model_output if prediction_type in ("sample", "original_sample") else combine(x, c.x0.sample, m, c.x0.model)
    return ops.cast(prev, out_dtype), x0


def euler_step(model_output: Any, sample: Any, *, sigmas: List[float], step_index: int,
               prediction_type: str = "epsilon", s_churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = float("inf"), s_noise: float = 1.0, generator: Any = None,
               coefficient_cache: Optional[dict] = None) -> Tuple[Any, Any]:
    """One Euler step with the step index given explicitly (no scheduler state); `EulerDiscreteScheduler.step`
    is this.

    Args:
        model_output, sample: the UNet's output for the (scaled) `sample`, and the unscaled sample x.
        sigmas: the sigma schedule (float32 values); the step goes from sigmas[step_index] to
            sigmas[step_index + 1].
        step_index: this step's position.
        prediction_type: "epsilon", "sample" (or its old name "original_sample") or "v_prediction".
        s_churn, s_tmin, s_tmax, s_noise: Karras' stochastic-sampling options (s_churn = 0: deterministic).
        generator: the churn noise source (see `EulerDiscreteScheduler.step`).
        coefficient_cache: a dict in which coefficients are memoised across calls (a scheduler's).

    Returns (prev_sample, pred_original_sample)."""
    sigma, sigma_next = sigmas[step_index], sigmas[step_index + 1]
    gamma = churn_gamma(sigma, len(sigmas), s_churn, s_tmin, s_tmax)
    coefficients = cached(coefficient_cache, ("euler", sigma, sigma_next, prediction_type, gamma, s_noise),
                          lambda: euler_coefficients(sigma, sigma_next, prediction_type, gamma, s_noise))
    ops = backend_of(model_output, sample)
    return _apply(ops, model_output, sample, coefficients, generator, prediction_type)


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler sampler with diffusers' `EulerDiscreteScheduler` interface and numbers, on NumPy, torch or
    MindSpore tensors.

    Constructor arguments and defaults are diffusers'; timesteps and sigmas are diffusers' (see `sigmas.py`).
    SDXL-Lightning uses it with timestep_spacing="trailing" (and prediction_type="sample" for its 1-step UNet).
    Differences: invalid configs raise ValueError at construction (unknown beta_schedule, prediction_type,
    timestep_spacing, interpolation_type, final_sigmas_type, timestep_type, more than one of the
    use_*_sigmas) and invalid arguments before anything changes (custom timesteps must be strictly
    descending in [0, T-1], custom sigmas non-negative and descending); `timestep` may be any number of the
    schedule, integers included (diffusers refuses ints, against enumerate indices); the timesteps and
    sigmas are NumPy float32 arrays without a device; `get_velocity` takes training timesteps (diffusers'
    indexes alphas_cumprod by the position in the schedule)."""

    _saved_as_module = "diffusers.schedulers.scheduling_euler_discrete"
    _prediction_types = ("epsilon", "sample", "v_prediction", "original_sample")

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
        interpolation_type: str = "linear",
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        """Build a scheduler; arguments and defaults are diffusers' EulerDiscreteScheduler's.

        Args:
            {schedule_arguments}
            interpolation_type (`str`, *optional*, defaults to 'linear'):
                "linear": the training sigmas interpolated at the timesteps; "log_linear": n + 1 sigmas evenly
                spaced in log sigma.
            use_karras_sigmas (`bool`, *optional*, defaults to False):
                Karras et al.'s rho = 7 sigmas (timesteps follow from them).
            use_exponential_sigmas (`bool`, *optional*, defaults to False):
                Sigmas evenly spaced in log sigma over [sigma_min, sigma_max].
            use_beta_sigmas (`bool`, *optional*, defaults to False):
                Sigmas at Beta(0.6, 0.6) quantiles (needs scipy).
            sigma_min (`float`, *optional*):
                The smallest sigma of the karras / exponential / beta sigmas; default the schedule's.
            sigma_max (`float`, *optional*):
                The largest; default the schedule's.
            timestep_type (`str`, *optional*, defaults to 'discrete'):
                "continuous" with v_prediction gives the UNet log(sigma) / 4 as its timestep (EDM-style models).
            final_sigmas_type (`str`, *optional*, defaults to 'zero'):
                The sigma after the last step: "zero" or "sigma_min" (the training schedule's smallest).

        Raises ValueError for an invalid config (ImportError for beta sigmas without scipy), before anything
        is built."""
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("interpolation_type", interpolation_type, INTERPOLATION_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if sum(bool(flag) for flag in (use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas)) > 1:
            raise ValueError("Only one of use_beta_sigmas, use_exponential_sigmas and use_karras_sigmas can be True.")
        if use_beta_sigmas:
            scipy_stats()  # fail now, as diffusers does, rather than at set_timesteps
        self._build_sigma_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                 prediction_type, rescale_betas_zero_snr, timestep_type)
        # diffusers keeps these three as attributes too
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Any = None,
        timesteps: Optional[List[float]] = None,
        sigmas: Optional[List[float]] = None,
    ) -> None:
        """Choose the inference timesteps and sigmas (run before the denoising loop).

        Args:
            num_inference_steps (`int`, *optional*):
                How many steps, spaced by the config's timestep_spacing. Exclusive with `timesteps` / `sigmas`.
            device (`str` or `torch.device`, *optional*):
                Where `timesteps` and `sigmas` should live. None keeps them NumPy float32 arrays; a device of an
                imported framework makes them float32 tensors there, as diffusers' pipelines expect.
            timesteps (`List[float]`, *optional*):
                Custom timesteps, strictly descending in [0, num_train_timesteps - 1]; the sigmas are
                interpolated at them. Not with karras / exponential / beta sigmas.
            sigmas (`List[float]`, *optional*):
                Custom sigmas, descending, the last one the target of the last step (e.g. 0); the timesteps
                follow from them.

        Raises ValueError (and changes nothing) for invalid combinations; the message names the fix."""
        plan = euler_plan(self.config, self.alphas_cumprod, num_inference_steps, timesteps, sigmas)
        self._apply_plan(plan, device)
        self.custom_timesteps = timesteps is not None or sigmas is not None

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Any = None,
        return_dict: bool = True,
    ):
        """Advance one step: the stateless `euler_step` with this scheduler's sigmas and step index.

        Args:
            model_output (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The UNet's output for `scale_model_input(sample, timestep)`.
            timestep (`float` or a one-element tensor):
                The current timestep, an element of `timesteps` (read only to find the first step's index).
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The current (unscaled) sample, of model_output's framework.
            s_churn (`float`, *optional*, defaults to 0.0):
                Karras' stochasticity: noise added before the step, gamma = min(s_churn / N, sqrt(2) - 1).
            s_tmin (`float`, *optional*, defaults to 0.0):
                Churn only where sigma >= s_tmin.
            s_tmax (`float`, *optional*, defaults to 1e999):
                Churn only where sigma <= s_tmax (the default, 1e999, is float("inf"): everywhere).
            s_noise (`float`, *optional*, defaults to 1.0):
                Scale of the churn noise.
            generator (*optional*):
                Noise source for s_churn > 0: a `fewstep.Generator`, `np.random.Generator`, `torch.Generator`
                (drawn as diffusers draws), a list of them (one per batch item), or None.
            return_dict (`bool`, *optional*, defaults to True):
                False returns the tuple (prev_sample, pred_original_sample).

        Returns:
            `EulerDiscreteSchedulerOutput(prev_sample, pred_original_sample)` (or the tuple): prev_sample of the
            model output's type and dtype, pred_original_sample in float32 (float64 for float64 inputs)."""
        index = self._current_index(timestep)
        prev_sample, x0 = euler_step(
            model_output, sample, sigmas=self._sigma_list, step_index=index,
            prediction_type=self.config["prediction_type"], s_churn=float(s_churn), s_tmin=float(s_tmin),
            s_tmax=float(s_tmax), s_noise=float(s_noise), generator=generator,
            coefficient_cache=self._coefficient_cache,
        )
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
