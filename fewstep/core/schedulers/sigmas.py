"""Sigma schedules: what EulerDiscreteScheduler and EulerAncestralDiscreteScheduler share.

The Euler samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models") work in the variance-exploding form x = x0 + sigma * eps, with sigma_t = sqrt((1 - a_t) / a_t)
for a = alphas_cumprod, so a DDPM-trained UNet is called on x / sqrt(sigma^2 + 1) (`scale_model_input`)
and the loop starts from noise of standard deviation sigma_max (`init_noise_sigma`).

The functions below build diffusers' inference timesteps and sigmas for both classes, with the same
NumPy operations on the same dtypes as diffusers' `set_timesteps` (so NumPy 1's value-based casting and
NumPy 2's NEP 50 give each the same numbers as diffusers under that NumPy), and torch's float32 steps
emulated where diffusers uses torch (`schedules.py`). Two torch transcendental calls are not correctly
rounded on the CPU (SLEEF, 1 ulp): `exp` in interpolation_type="log_linear" and `log` in
timestep_type="continuous"; fewstep rounds those correctly, so a few entries there may differ from
diffusers' by one float32 ulp. Everything else is bit-identical.

`SigmaScheduler` is the facade both classes derive from: the tables, the timesteps and sigmas (host
lists for the step, views for users), the step index found from a float timestep as diffusers finds
it, `scale_model_input`, `init_noise_sigma` and `add_noise` in sigma form.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from fewstep.core.registry import backend_of, device_anchor
from fewstep.core.schedulers.parameterisation import cached
from fewstep.core.schedulers.scheduler import DiscreteScheduler
from fewstep.core.schedulers.timesteps import as_int, index_for_timestep
from fewstep.core.schedules import torch_linspace_float32

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
INTERPOLATION_TYPES = ("linear", "log_linear")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
TIMESTEP_TYPES = ("discrete", "continuous")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5: the value used in the paper
# diffusers' KarrasDiffusionSchedulers: the classes whose configs the Euler samplers load (`compatibles`)
KARRAS_COMPATIBLES = [
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
]
# rescale_betas_zero_snr makes alphas_cumprod[-1] = 0 and sigma_max infinite; diffusers' Euler samplers put
# float16's smallest subnormal there instead, so the first sigma is large but finite (and epsilon works).
ZERO_SNR_ALPHA_CUMPROD = np.float32(2.0**-24)
ZERO_SNR_DESCRIPTION = ("Rescale the betas to zero terminal SNR; the last alphas_cumprod becomes 2^-24, as in "
                        "diffusers (so epsilon prediction works too).")


# ---------------------------------------------------------------------------------------------
# tables


def sqrt32(x):
    """The correctly rounded float32 square root, the one place the sigma tables take one. torch's float32
    sqrt (diffusers' `** 0.5`) is IEEE on most CPUs but only faithful on some (one ulp off for ~15% of
    inputs, seen on AMD EPYC with torch 2.13's build, as `schedules.py` notes); tests substitute torch's
    here to show everything else is bit for bit."""
    return np.sqrt(np.asarray(x, dtype=np.float32))


def training_sigmas(alphas_cumprod_table: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - a_t) / a_t) for every training timestep, ascending in t, float32 as torch forms it
    (each op rounded to float32)."""
    a = np.asarray(alphas_cumprod_table, dtype=np.float32)
    return sqrt32((np.float32(1.0) - a) / a).astype(np.float32)


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0):
    """diffusers' float32 inference timesteps, descending (Lin et al. 2023, Table 2), in its NumPy operations.

    linspace: evenly spaced over [0, T-1], not integers in general. leading: multiples of T // n, plus
    steps_offset. trailing: T - 1 downwards in steps of T / n, rounded; as in diffusers, float arange can give
    one entry more than n, at -1 (e.g. T=1000, n=61)."""
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        step_ratio = T // n
        timesteps = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.float32)
        timesteps += steps_offset
        return timesteps
    if spacing == "trailing":
        step_ratio = T / n
        timesteps = (np.arange(T, 0, -step_ratio)).round().copy().astype(np.float32)
        timesteps -= 1
        return timesteps
    raise ValueError(f"Unknown timestep_spacing {spacing!r}; use one of {', '.join(map(repr, TIMESTEP_SPACINGS))}.")


def interpolated_sigmas(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The training sigmas linearly interpolated at (float) timesteps: float64, as np.interp returns them."""
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def log_linear_sigmas(sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """n + 1 sigmas evenly spaced in log sigma from sigma_max to sigma_min (float32), as diffusers'
    `torch.linspace(log(s[-1]), log(s[0]), n + 1).exp()`: the linspace bit for bit, the exp correctly
    rounded (torch's may be one ulp off)."""
    ends = np.log(sigmas[-1]), np.log(sigmas[0])
    grid = torch_linspace_float32(float(ends[0]), float(ends[1]), num_inference_steps + 1)
    return np.exp(grid.astype(np.float64)).astype(np.float32)


def sigma_to_t(sigma, log_sigmas: np.ndarray):
    """The (fractional) training timestep of `sigma`: linear interpolation in log sigma between the two
    training sigmas around it, clipped to the table (diffusers' `_sigma_to_t`, same NumPy operations)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = (low - log_sigma) / (low - high)
    w = np.clip(w, 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def _range(in_sigmas: np.ndarray, sigma_min: Optional[float], sigma_max: Optional[float]):
    return (sigma_min if sigma_min is not None else in_sigmas[-1].item(),
            sigma_max if sigma_max is not None else in_sigmas[0].item())


def karras_sigmas(in_sigmas: np.ndarray, num_inference_steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Karras et al. (2022), eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, rho = 7,
    so the steps crowd towards sigma_min. The range defaults to the interpolated sigmas' ends."""
    sigma_min, sigma_max = _range(in_sigmas, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / KARRAS_RHO)
    max_inv_rho = sigma_max ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def exponential_sigmas(in_sigmas: np.ndarray, num_inference_steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Evenly spaced in log sigma from sigma_max to sigma_min (float64)."""
    sigma_min, sigma_max = _range(in_sigmas, sigma_min, sigma_max)
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def scipy_stats():
    try:
        import scipy.stats  # optional: only beta sigmas need it, as in diffusers
    except ImportError as err:
        raise ImportError(
            f"use_beta_sigmas=True needs scipy, which cannot be imported ({err}); install it with `pip install scipy`."
        ) from err
    return scipy.stats


def beta_sigmas(in_sigmas: np.ndarray, num_inference_steps: int, sigma_min=None, sigma_max=None,
                alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. (2024), "Beta Sampling is All You Need": sigmas at the Beta(0.6, 0.6) quantiles of an
    even grid, so the steps crowd at both ends of [sigma_min, sigma_max] (float64)."""
    stats = scipy_stats()
    sigma_min, sigma_max = _range(in_sigmas, sigma_min, sigma_max)
    quantiles = [stats.beta.ppf(timestep, alpha, beta) for timestep in 1 - np.linspace(0, 1, num_inference_steps)]
    return np.array([sigma_min + (ppf * (sigma_max - sigma_min)) for ppf in quantiles])


def final_sigma(alphas_cumprod_table: np.ndarray, final_sigmas_type: str):
    """The sigma after the last step: 0 (the clean sample) or the training schedule's smallest sigma."""
    if final_sigmas_type == "sigma_min":
        a = np.float32(alphas_cumprod_table[0])
        return np.float32(sqrt32((np.float32(1.0) - a) / a))  # float32, as torch's 0-d arithmetic
    if final_sigmas_type == "zero":
        return 0
    raise ValueError(f"Unknown final_sigmas_type {final_sigmas_type!r}; use one of "
                     f"{', '.join(map(repr, FINAL_SIGMAS_TYPES))}.")


def continuous_timesteps(sigmas: np.ndarray) -> np.ndarray:
    """EDM's noise-conditioning input c_noise = log(sigma) / 4 (Karras et al. 2022, Table 1), float32; the
    log correctly rounded (torch's may be one ulp off)."""
    return (np.float32(0.25) * np.log(np.asarray(sigmas, dtype=np.float64)).astype(np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# inference schedules


class SigmaPlan(NamedTuple):
    timesteps: np.ndarray  # float32, what the UNet is called with
    sigmas: np.ndarray     # float32, one more than the steps taken (the last is the target of the last step)
    num_inference_steps: int


def _check_steps(num_inference_steps, num_train_timesteps: int) -> int:
    n = as_int(num_inference_steps, "num_inference_steps")
    if n < 1:
        raise ValueError(f"`num_inference_steps` must be at least 1, got {n}.")
    if n > num_train_timesteps:
        raise ValueError(f"`num_inference_steps`={n} cannot exceed num_train_timesteps={num_train_timesteps}.")
    return n


def _host_values(values, what: str) -> np.ndarray:
    """A list, array or tensor of numbers as the float array diffusers makes of it (`np.array(values)`)."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # NumPy arrays and framework tensors (any device)
    if isinstance(values, numbers.Number):
        values = [values]
    try:
        array = np.array(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{what}` must be a list of numbers, got {values!r}.") from err
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise ValueError(f"`{what}` must be a non-empty list of numbers, got {values!r}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{what}` must be finite, got {array.tolist()}.")
    return array


def _check_custom_timesteps(timesteps, num_train_timesteps: int) -> np.ndarray:
    array = _host_values(timesteps, "timesteps")
    values = array.astype(np.float32)
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"`timesteps` must be strictly descending (from high noise to low), got {values.tolist()}.")
    if values[0] > num_train_timesteps - 1 or values[-1] < 0:
        raise ValueError(f"`timesteps` must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps - 1), "
                         f"got {values.tolist()}.")
    return array


def _check_custom_sigmas(sigmas) -> np.ndarray:
    values = _host_values(sigmas, "sigmas").astype(np.float32)
    if len(values) < 2:
        raise ValueError(f"`sigmas` needs at least two values (one step goes from sigmas[0] to sigmas[1], e.g. "
                         f"[14.6, 0.0]), got {values.tolist()}.")
    # the steps' sigmas strictly descending (a repeated one gives a repeated timestep, where the step index
    # would skip); the final target may equal the last (final_sigmas_type="sigma_min" schedules)
    if np.any(values < 0) or np.any(np.diff(values[:-1]) >= 0) or values[-1] > values[-2]:
        raise ValueError(f"`sigmas` must be non-negative and descending (strictly, but for the last), got "
                         f"{values.tolist()}.")
    return values


def euler_plan(config, alphas_cumprod_table: np.ndarray, num_inference_steps=None, timesteps=None,
               sigmas=None) -> SigmaPlan:
    """EulerDiscreteScheduler.set_timesteps as a pure function: validates everything first, so a failed
    call changes no scheduler state."""
    T = int(config["num_train_timesteps"])
    if timesteps is not None and sigmas is not None:
        raise ValueError("Pass only one of `timesteps` or `sigmas`.")
    if num_inference_steps is None and timesteps is None and sigmas is None:
        raise ValueError("Pass exactly one of `num_inference_steps` (e.g. set_timesteps(4)), `timesteps` or `sigmas`.")
    if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
        raise ValueError("Pass only one of `num_inference_steps`, `timesteps` or `sigmas`.")
    continuous_v = config["timestep_type"] == "continuous" and config["prediction_type"] == "v_prediction"
    if timesteps is not None:
        for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if config[option]:
                raise ValueError(f"Custom `timesteps` cannot be used with {option}=True (that option chooses the "
                                 f"sigmas, and so the timesteps); pass `sigmas=` instead.")
        if continuous_v:
            raise ValueError("Custom `timesteps` cannot be used with timestep_type='continuous' and "
                             "prediction_type='v_prediction' (the timesteps are log(sigma) / 4); pass `sigmas=`.")
    full = training_sigmas(alphas_cumprod_table)
    log_sigmas = np.log(full)

    if sigmas is not None:
        sigmas = _check_custom_sigmas(sigmas)
        n = len(sigmas) - 1
        timesteps = np.array([sigma_to_t(sigma, log_sigmas) for sigma in sigmas[:-1]])
    else:
        if timesteps is not None:
            timesteps = _check_custom_timesteps(timesteps, T).astype(np.float32)
            n = len(timesteps)
        else:
            n = _check_steps(num_inference_steps, T)
            timesteps = spaced_timesteps(config["timestep_spacing"], T, n, config["steps_offset"])
        if config["interpolation_type"] == "linear":
            sigmas = interpolated_sigmas(timesteps, full)
        else:
            sigmas = log_linear_sigmas(full, n)  # n + 1 of them, as diffusers (the last step is from s_n)
        options = (("use_karras_sigmas", karras_sigmas), ("use_exponential_sigmas", exponential_sigmas),
                   ("use_beta_sigmas", beta_sigmas))
        for option, convert in options:
            if config[option]:
                sigmas = convert(sigmas, n, config["sigma_min"], config["sigma_max"])
                timesteps = np.array([sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
        last = final_sigma(alphas_cumprod_table, config["final_sigmas_type"])
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)

    sigmas = sigmas.astype(np.float32)
    if continuous_v:
        timesteps = continuous_timesteps(sigmas[:-1])
    return SigmaPlan(np.asarray(timesteps).astype(np.float32), sigmas, n)


def euler_ancestral_plan(config, alphas_cumprod_table: np.ndarray, num_inference_steps) -> SigmaPlan:
    """EulerAncestralDiscreteScheduler.set_timesteps as a pure function (spacing and linear interpolation only)."""
    T = int(config["num_train_timesteps"])
    n = _check_steps(num_inference_steps, T)
    timesteps = spaced_timesteps(config["timestep_spacing"], T, n, config["steps_offset"])
    sigmas = interpolated_sigmas(timesteps, training_sigmas(alphas_cumprod_table))
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return SigmaPlan(timesteps, sigmas, n)


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; use one of {', '.join(map(repr, choices))}.")


def float32_timestep(timestep: Any) -> float:
    """A timestep (Python or NumPy number, one-element array or tensor of any framework) as the float32 value
    diffusers compares with its float32 timesteps, as a Python float."""
    if hasattr(timestep, "item"):
        size = timestep.numel() if hasattr(timestep, "numel") else getattr(timestep, "size", 1)  # torch | others
        if size != 1:
            raise ValueError(f"`timestep` must be one number, got {size} values; pass one of scheduler.timesteps.")
        timestep = timestep.item()
    if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
        raise ValueError(f"`timestep` must be a number, got {timestep!r}; pass one of scheduler.timesteps.")
    return float(np.float32(timestep))


# ---------------------------------------------------------------------------------------------
# the shared facade


class SigmaScheduler(DiscreteScheduler):
    """The facade of the Euler samplers: `DiscreteScheduler` with float timesteps and a sigma schedule.

    `timesteps` are float32 (a NumPy array, or a tensor on the device the last `set_timesteps(device=...)`
    named), as diffusers' are: linspace spacing gives fractional timesteps, passed to the UNet as they are.
    `sigmas` is the float32 sigma schedule (one more than the steps), a NumPy array or a tensor likewise.
    The step index is found as diffusers finds it: the (second, if repeated) position of the timestep's
    float32 value in `timesteps`, or `begin_index` when an img2img pipeline set one."""

    _compatibles = KARRAS_COMPATIBLES
    _prediction_types = ("epsilon", "sample", "v_prediction")
    _initial_timestep_dtype = "float32"

    def _build_sigma_tables(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            prediction_type, rescale_betas_zero_snr, timestep_type="discrete") -> None:
        """Validate the schedule's config and build the tables and the training-time schedule (before
        `set_timesteps`, diffusers' Euler steps over all training timesteps)."""
        check_choice("timestep_type", timestep_type, TIMESTEP_TYPES)
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                           rescale_betas_zero_snr, zero_snr_alpha_cumprod=ZERO_SNR_ALPHA_CUMPROD)
        self.is_scale_input_called = False
        T, table = as_int(num_train_timesteps, "num_train_timesteps"), self.alphas_cumprod
        descending = training_sigmas(table)[::-1]
        if timestep_type == "continuous" and prediction_type == "v_prediction":
            timesteps = continuous_timesteps(descending)
        else:
            timesteps = np.linspace(0, T - 1, T, dtype=float)[::-1].astype(np.float32)
        sigmas = np.concatenate([descending, np.zeros(1, dtype=np.float32)])
        self._set_schedule(timesteps, sigmas, None, self._initial_timestep_dtype)

    # -- schedule views ----------------------------------------------------------------------

    def _set_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, anchor: Any = None,
                      timestep_dtype: str = "float32") -> None:
        # Host lists are what the scheduler computes with (Python floats of the float32 values: cheap scalar
        # lookups); the views are what users and pipelines read.
        self._timestep_list = timesteps.tolist()
        self._sigma_list = sigmas.astype(np.float32).tolist()
        self._anchor = anchor
        if anchor is None:
            self._timesteps_view = timesteps.astype(timestep_dtype)
            self._sigmas_view = sigmas.astype(np.float32)
        else:
            backend = backend_of(anchor)
            self._timesteps_view = backend.from_numpy(timesteps.astype(timestep_dtype), like=anchor, dtype=timestep_dtype)
            self._sigmas_view = backend.from_numpy(sigmas.astype(np.float32), like=anchor, dtype="float32")
        self._step_index = None
        self._begin_index = None

    @property
    def timesteps(self):
        """The inference timesteps, descending, float32: a NumPy array, or a tensor on the device the last
        `set_timesteps(device=...)` named. Not integers in general (linspace spacing, karras sigmas)."""
        return self._timesteps_view

    @timesteps.setter
    def timesteps(self, value) -> None:
        self._timestep_list, self._timesteps_view = _assigned_schedule(value)

    @property
    def sigmas(self):
        """The sigma schedule, float32, one entry more than the steps: a NumPy array, or a tensor on the device
        of the last `set_timesteps(device=...)`."""
        return self._sigmas_view

    @sigmas.setter
    def sigmas(self, value) -> None:
        self._sigma_list, self._sigmas_view = _assigned_schedule(value)

    @property
    def init_noise_sigma(self):
        """The standard deviation of the initial noise: sigma_max for linspace / trailing spacing, else
        sqrt(sigma_max^2 + 1) (as diffusers). A Python float (the float32 value; `HostSigma`, which also answers
        `.cpu()` and `.item()` as diffusers' 0-d tensor does), or a 0-d float32 tensor of the framework and device
        of the last `set_timesteps(device=...)`."""
        top = np.float32(max(self._sigma_list))
        if self.config["timestep_spacing"] not in ("linspace", "trailing"):
            top = np.float32(sqrt32(top * top + np.float32(1.0)))
        if self._anchor is None:
            return HostSigma(top)
        return backend_of(self._anchor).from_numpy(np.asarray(top, dtype=np.float32), like=self._anchor, dtype="float32")

    def _apply_plan(self, plan: SigmaPlan, device: Any) -> None:
        self._set_schedule(plan.timesteps, plan.sigmas, device_anchor(device))
        self.num_inference_steps = plan.num_inference_steps

    # -- step index --------------------------------------------------------------------------

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Optional[Sequence[float]] = None) -> int:
        """Position of `timestep` in the schedule, compared as float32 (the second match if it occurs twice, as
        diffusers: an img2img run then does not skip a sigma).

        Args:
            timestep (`float` or a one-element tensor):
                A timestep of the schedule.
            schedule_timesteps (`List[float]` or a tensor, *optional*):
                The schedule to search; `self.timesteps` when not given.

        Returns:
            `int`: the index."""
        value = float32_timestep(timestep)
        if schedule_timesteps is None:
            schedule = self._timestep_list
        else:
            schedule = np.asarray(_host_list(schedule_timesteps), dtype=np.float32).tolist()
        return index_for_timestep(schedule, value)

    def _current_index(self, timestep: Any) -> int:
        """The index of this step: the running step index, else found from `timestep` (or begin_index), as
        diffusers' `_init_step_index`; a timestep is only read for the first step."""
        index = self._step_index
        if index is None:
            index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            self._step_index = index
        if index + 1 >= len(self._sigma_list):
            raise ValueError(
                f"All {len(self._sigma_list) - 1} steps of this schedule have been taken (step index {index}); call "
                f"scheduler.set_timesteps(...) to start a new loop."
            )
        return index

    def _work_dtype(self, ops, *tensors) -> str:
        # float32 for float32 and lower precisions (as diffusers upcasts the sample), float64 for float64
        return "float64" if any(ops.dtype_name(t) == "float64" for t in tensors) else "float32"

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        """The UNet's input x / sqrt(sigma^2 + 1): the variance-exploding sample at this step's sigma rescaled to
        unit variance, the DDPM form the UNet was trained on. Sets the step index on the first call, as diffusers.

        Args:
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The noisy sample at this step.
            timestep (`float` or a one-element tensor, *optional*):
                This step's timestep, an element of `timesteps` (read only to find the first step's index; may be
                left out once the step index is known).

        Returns:
            The scaled sample, of the sample's type and dtype: float32 and float16 samples bit for bit as
            diffusers' (sqrt(sigma^2 + 1) formed in float32), float64 ones with the divisor in float64."""
        index = self._step_index
        if index is None:
            index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            self._step_index = index
        if index >= len(self._sigma_list):
            raise ValueError(f"Step index {index} is past the schedule's {len(self._sigma_list)} sigmas; call "
                             f"scheduler.set_timesteps(...) to start a new loop.")
        ops = backend_of(sample)
        dtype = ops.dtype_name(sample)
        work = "float64" if dtype == "float64" else "float32"
        divisor = cached(self._coefficient_cache, ("scale", self._sigma_list[index], work),
                         lambda: _input_scale(self._sigma_list[index], work))
        self.is_scale_input_called = True
        if dtype in ("float32", "float64"):
            return sample / divisor
        # float16 / bfloat16: in float32 and rounded once, as torch's scalar division computes it
        return ops.cast(ops.cast(sample, "float32") / divisor, dtype)

    # -- forward process ---------------------------------------------------------------------

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any:
        """Forward diffusion in sigma form: x = x0 + sigma * noise, sigma at the timesteps' positions in the
        schedule (or at the step / begin index an img2img pipeline set, as diffusers).

        Args:
            original_samples (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The clean samples x0.
            noise (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                Standard normal noise of the same shape and framework.
            timesteps (a number, a list, an array or a tensor):
                One timestep for the batch, or one per batch item, elements of `timesteps`.

        Returns:
            The noisy samples, of the samples' type and dtype."""
        ops = backend_of(original_samples, noise)
        values = _host_list(timesteps)
        if not values:
            raise ValueError("`timesteps` is empty; pass one timestep, or one per batch item.")
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in values]
        elif self._step_index is not None:
            indices = [self._step_index] * len(values)  # after the first step (inpainting)
        else:
            indices = [self._begin_index] * len(values)  # before the first step (img2img)
        if max(indices) >= len(self._sigma_list):
            raise ValueError(f"Index {max(indices)} is past the schedule's {len(self._sigma_list)} sigmas.")
        dtype = ops.dtype_name(original_samples)
        work = "float64" if dtype == "float64" else "float32"
        sigma = np.asarray([self._sigma_list[i] for i in indices], dtype=np.float32).astype(work)
        if dtype not in ("float32", "float64"):
            x, z = ops.cast(original_samples, "float32"), ops.cast(noise, "float32")
            return ops.cast(x + z * self._broadcast(sigma, x, ops), dtype)
        return original_samples + noise * self._broadcast(sigma, original_samples, ops)


class HostSigma(float):
    """A Python float that code written for diffusers' 0-d tensor sigma can use as one: `.cpu()` and `.item()`
    (diffusers' own tests call `scheduler.init_noise_sigma.cpu()`). Arithmetic gives plain floats or the other
    operand's tensors, dtypes kept (a Python float promotes no float16 tensor)."""

    def cpu(self) -> "HostSigma":
        return self

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy 2 treats only exact Python floats as weak scalars: as a plain float, a float16 array stays float16
        inputs = tuple(float(x) if isinstance(x, HostSigma) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def item(self) -> float:
        return float(self)


def _input_scale(sigma: float, work: str) -> float:
    """sqrt(sigma^2 + 1) as diffusers forms it: in float32 (each op rounded), or in float64."""
    if work == "float64":
        return math.sqrt(sigma * sigma + 1.0)
    s = np.float32(sigma)
    return float(sqrt32(s * s + np.float32(1.0)))


def _assigned_schedule(value: Any) -> Tuple[List[float], Any]:
    """(host list, view) of timesteps or sigmas a pipeline assigns, as on diffusers' schedulers (a sliced
    schedule): a framework tensor stays that tensor, and the float32 host copy the step reads follows it."""
    host = np.asarray(value.tolist() if hasattr(value, "tolist") else list(value), dtype=np.float32).reshape(-1)
    is_tensor = hasattr(value, "tolist") and not isinstance(value, (np.ndarray, list, tuple))
    return host.tolist(), value if is_tensor else host


def _host_list(values: Any) -> List[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, numbers.Number):
        return [float(values)]
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
