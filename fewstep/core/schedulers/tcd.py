"""TCD: Strategic Stochastic Sampling from Trajectory Consistency Distillation.

Zheng et al. (2024), "Trajectory Consistency Distillation", arXiv 2402.19159, Alg. 4. From timestep
t the model's prediction jumps *along the trajectory* to an intermediate time s = floor((1 - eta) *
t_prev) (a DDIM step t -> s), then fresh noise diffuses the result forward from s back to t_prev:

    x0, eps  from the model output (epsilon / sample / v parameterisation)
    x_s      = sqrt(a_s) * x0 + sqrt(1 - a_s) * eps                        "pred_noised_sample"
    x_prev   = sqrt(a_prev / a_s) * x_s + sqrt(1 - a_prev / a_s) * z       (eta > 0, not the last step)
    x_prev   = x_s                                                          (otherwise; no noise drawn)

with a = alphas_cumprod. eta (the paper's gamma) = 0 is deterministic DDIM between the schedule's
timesteps; eta = 1 jumps to s = 0 and re-noises, i.e. LCM-style multistep consistency sampling. After
the last timestep t_prev = 0, so the final output is x_s at s = 0 (not exactly x0). TCD never clips
or thresholds x0 (clip_sample and thresholding are in its config only for compatibility).

Because x0 and eps are linear in (sample, model_output), each step is two linear combinations with
Python-float coefficients computed once in float64 (`tcd_coefficients`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from fewstep.core.noise import randn_like
from fewstep.core.registry import backend_of
from fewstep.core.schedulers.parameterisation import cached, linear_combination, x0_and_eps_coefficients
from fewstep.core.schedulers.scheduler import ConsistencyScheduler, StepOutput, step_docstring
from fewstep.core.schedulers.timesteps import step_position


@dataclass
class TCDSchedulerOutput(StepOutput):
    """`prev_sample`: input of the next step. `pred_noised_sample`: x_s, the model's jump to time s."""

    prev_sample: Any
    pred_noised_sample: Any = None


class TCDCoefficients(NamedTuple):
    """x_s = xs_sample * sample + xs_model * model_output; x_prev = prev_xs * x_s + prev_noise * z."""

    xs_sample: float
    xs_model: float
    prev_xs: float
    prev_noise: float


def intermediate_timestep(prev_timestep: int, eta: float) -> int:
    """s = floor((1 - eta) * t_prev), with the product in float32 as torch computes it on an int64
    tensor: float64 would give e.g. 62 instead of 63 for eta=0.3, t_prev=90 (reference §8 P4).
    `1 - eta` is formed in Python double first, then rounded to float32, as torch does."""
    return int(np.floor(np.float32(1.0 - eta) * np.float32(prev_timestep)))


def tcd_coefficients(
    alphas_cumprod: Sequence[float],
    timestep: int,
    prev_timestep: int,
    eta: float,
    prediction_type: str = "epsilon",
    add_noise: bool = True,
) -> TCDCoefficients:
    """The step's coefficients, in float64 from the float32 table. Without noise (eta == 0 or the last
    step) x_prev = x_s, returned as prev_xs = 1.0, prev_noise = 0.0 so callers can skip the draw."""
    s = intermediate_timestep(prev_timestep, eta)
    alpha_t = float(alphas_cumprod[timestep])
    alpha_s = np.float64(alphas_cumprod[s])
    x0, eps = x0_and_eps_coefficients(alpha_t, prediction_type)
    root_s, root_1s = float(np.sqrt(alpha_s)), float(np.sqrt(1.0 - alpha_s))
    xs_sample = root_s * x0.sample + root_1s * eps.sample
    xs_model = root_s * x0.model + root_1s * eps.model
    if not add_noise:
        return TCDCoefficients(xs_sample, xs_model, 1.0, 0.0)
    ratio = np.float64(alphas_cumprod[prev_timestep]) / alpha_s  # <= 1 because s <= t_prev, so the noise scale is real
    return TCDCoefficients(xs_sample, xs_model, float(np.sqrt(ratio)), float(np.sqrt(1.0 - ratio)))


def _check_eta(eta: Any) -> float:
    if type(eta) is float and 0.0 <= eta <= 1.0:  # the common case, once per step: skip the ABC check
        return eta
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise ValueError(
            f"eta must be a number in [0, 1], got {eta!r}: 0 is deterministic, 1 fully stochastic; TCD's "
            f"recommended value is 0.3 (pass it explicitly to diffusers pipelines, whose default is 0.0)."
        )
    return float(eta)


def _apply(ops, model_output, sample, coefficients: TCDCoefficients, noisy: bool, generator):
    """x_s and x_prev as tensors: two linear combinations and at most one noise draw."""
    pred_noised = linear_combination(sample, coefficients.xs_sample, model_output, coefficients.xs_model)
    if not noisy:
        return pred_noised, pred_noised
    noise = randn_like(ops, ops.shape(model_output), ops.dtype_name(pred_noised), generator, like=sample)
    return linear_combination(pred_noised, coefficients.prev_xs, noise, coefficients.prev_noise), pred_noised


def tcd_step(model_output: Any, timestep: int, sample: Any, *, timesteps: Sequence[int], step_index: int,
             alphas_cumprod: Sequence[float], prediction_type: str = "epsilon", eta: float = 0.3,
             generator: Any = None, num_inference_steps: Optional[int] = None,
             coefficient_cache: Optional[dict] = None):
    """One TCD step with the step index given explicitly (no scheduler state); `TCDScheduler.step` is this.

    Args:
        model_output, timestep, sample: the UNet's output at `timestep` for the noisy `sample`.
        timesteps: the schedule; the step goes from timesteps[step_index] to timesteps[step_index + 1]
            (to 0 after the last one).
        step_index: the index of `timestep` in the schedule.
        alphas_cumprod: the training schedule's cumulative alphas.
        prediction_type: "epsilon", "sample" or "v_prediction".
        eta: the paper's gamma in [0, 1].
        generator: the noise source (see `TCDScheduler.step`).
        num_inference_steps: defaults to len(timesteps); the step at index num_inference_steps - 1 is the
            last one and draws no noise.
        coefficient_cache: a dict in which coefficients are memoised across calls (a scheduler's).

    Returns (prev_sample, pred_noised_sample)."""
    eta = _check_eta(eta)
    t, prev, last = step_position(timesteps, step_index, timestep, num_inference_steps)
    prev_t = 0 if prev is None else prev  # after the last timestep TCD steps to s = 0
    noisy = eta > 0 and not last
    coefficients = cached(coefficient_cache, ("tcd", t, prev_t, eta, noisy, prediction_type),
                          lambda: tcd_coefficients(alphas_cumprod, t, prev_t, eta, prediction_type, noisy))
    return _apply(backend_of(model_output, sample), model_output, sample, coefficients, noisy, generator)


class TCDScheduler(ConsistencyScheduler):
    """TCD sampler with diffusers' `TCDScheduler` interface and numbers, on NumPy, torch or MindSpore tensors.

    Constructor arguments and defaults are diffusers' (num_train_timesteps=1000, beta_start=0.00085,
    beta_end=0.012, beta_schedule="scaled_linear", original_inference_steps=50, prediction_type="epsilon",
    ...). Differences: invalid configs and arguments raise ValueError up front (unknown beta_schedule,
    unknown prediction_type, rescale_betas_zero_snr with epsilon prediction, eta outside [0, 1], a
    timestep not in the schedule); `timesteps` is a NumPy int64 array; custom timesteps with strength < 1
    set num_inference_steps to the kept length (see `set_timesteps`).

    As in diffusers, passing `original_inference_steps` to `set_timesteps` explicitly (even 50) selects
    timesteps from the full 0..T-1 range instead of the distillation grid: set_timesteps(4) gives
    [999, 759, 499, 259] but set_timesteps(4, original_inference_steps=50) gives [999, 749, 499, 249]."""

    _full_range_if_explicit = True
    _saved_as_module = "diffusers.schedulers.scheduling_tcd"

    @step_docstring
    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        eta: float = 0.3,
        generator: Any = None,
        return_dict: bool = True,
    ):
        """Advance one timestep: the stateless `tcd_step` with this scheduler's schedule and step index.

        Args:
            {step_arguments}
            eta (`float`, *optional*, defaults to 0.3):
                The paper's gamma in [0, 1]; 0 deterministic, 0.3 recommended.
            generator (*optional*):
                Noise source for eta > 0: a `fewstep.Generator`, `np.random.Generator`, `torch.Generator` (drawn
                as diffusers draws), a list of them (one per batch item), or None.
            return_dict (`bool`, *optional*, defaults to True):
                False returns the tuple (prev_sample, pred_noised_sample).

        Returns:
            `TCDSchedulerOutput(prev_sample, pred_noised_sample)` (or the tuple) of the input's type and dtype.
        """
        t, index = self._begin_step(timestep)
        prev_sample, pred_noised = tcd_step(
            model_output, t, sample, timesteps=self._timestep_list, step_index=index,
            alphas_cumprod=self._alphas_cumprod_list, prediction_type=self.config["prediction_type"], eta=eta,
            generator=generator, num_inference_steps=self.num_inference_steps,
            coefficient_cache=self._coefficient_cache,
        )
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, pred_noised
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised)
