"""The facade fewstep's schedulers share (TCD, LCM, DDIM, ...): diffusers' scheduler interface over the pure parts.

It holds the tables built from the config (betas, alphas_cumprod), the inference timesteps chosen by
`set_timesteps` (`timesteps.py`), the step index, and the forward process (`add_noise`,
`get_velocity`). The step itself is each algorithm's stateless function (`tcd_step`, `lcm_step`,
`ddim_step`), which the subclasses' `step` calls with the state it keeps here.

Timesteps are planned on the host. `timesteps` is what the last `set_timesteps(device=...)` asked for:
a NumPy int64 array without a device, a tensor of the framework that owns the device otherwise (a
`torch.device` or a device string once torch is imported gives a torch int64 tensor there), so diffusers
code can `.to(device)`, `.item()` and index it as it does its own schedulers' timesteps.
"""

from __future__ import annotations

import inspect
import textwrap
from collections import OrderedDict
from dataclasses import fields
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from fewstep.core.registry import backend_of, device_anchor
from fewstep.core.schedulers.config import Configurable, records_config
from fewstep.core.schedulers.parameterisation import PREDICTION_TYPES
from fewstep.core.schedulers.timesteps import as_int, index_for_timestep, select_timesteps, timestep_as_int
from fewstep.core.schedules import alphas_cumprod, make_betas, rescale_zero_terminal_snr


_FIELD_NAMES: dict = {}  # StepOutput subclass -> its dataclass field names


class StepOutput(OrderedDict):
    """A step's tensors, used as diffusers' `BaseOutput` is: `out.prev_sample`, `out["prev_sample"]`,
    `out[0]`, `out.to_tuple()`, `out.keys()` / `.values()` / `.items()`. Subclasses are dataclasses;
    as in diffusers, fields left None are attributes but not dict entries."""

    def __post_init__(self):
        # a step builds one of these per call: the field names are read once per class
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in fields(self))
        for name in names:
            value = getattr(self, name)
            if value is not None:
                OrderedDict.__setitem__(self, name, value)

    def __setattr__(self, name, value):
        if value is not None and name in self:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


# The Args entries of the training-schedule arguments every scheduler takes, written once: (type, description).
# `schedule_docstring` adds each class's default, read from its signature (diffusers' defaults differ per class).
_SCHEDULE_ARGUMENTS = {
    "num_train_timesteps": ("`int`", "The number of diffusion steps the model was trained with."),
    "beta_start": ("`float`", "The first beta of the schedule."),
    "beta_end": ("`float`", "The last beta of the schedule."),
    "beta_schedule": ("`str`", '"linear", "scaled_linear" (Stable Diffusion) or "squaredcos_cap_v2" (cosine).'),
    "trained_betas": ("`np.ndarray` or `List[float]`",
                      "Betas to use instead of a schedule, one per training timestep."),
    "prediction_type": ("`str`", 'What the model predicts: "epsilon", "sample" or "v_prediction".'),
    "timestep_spacing": ("`str`", '"linspace", "leading" or "trailing" (Lin et al. 2023, Table 2; few-step LoRAs use '
                                  '"trailing").'),
    "steps_offset": ("`int`", 'Added to the timesteps of "leading" spacing (Stable Diffusion\'s configs use 1).'),
    "rescale_betas_zero_snr": ("`bool`",
                               'Rescale the betas to zero terminal SNR (needs prediction_type="v_prediction").'),
}


def schedule_docstring(**descriptions: str):
    """Decorator for a scheduler's `__init__`: its docstring's `{schedule_arguments}` becomes the Args entries of
    the training-schedule arguments it takes (`_SCHEDULE_ARGUMENTS`), in the signature's order, each with the
    default of this signature. `descriptions` replace the shared text where a class means something else."""
    unknown = set(descriptions) - set(_SCHEDULE_ARGUMENTS)
    if unknown:
        raise ValueError(f"schedule_docstring: no shared entry for {sorted(unknown)}; document them in the docstring.")

    def decorate(init):
        entries = []
        for name, parameter in inspect.signature(init).parameters.items():
            if name not in _SCHEDULE_ARGUMENTS:
                continue
            kind, text = _SCHEDULE_ARGUMENTS[name]
            default = "" if parameter.default is None else f", defaults to {parameter.default!r}"
            entries.append(f"\n            {name} ({kind}, *optional*{default}):\n"
                           + textwrap.fill(descriptions.get(name, text), 120, initial_indent=" " * 16,
                                           subsequent_indent=" " * 16))
        init.__doc__ = init.__doc__.replace("\n            {schedule_arguments}", "".join(entries))
        return init

    return decorate


class DiscreteScheduler(Configurable):
    """What every fewstep scheduler shares: the tables of a discrete training schedule (betas,
    alphas_cumprod), the inference timesteps, the step index and the forward process (`add_noise`,
    `get_velocity`).

    A subclass declares its config in its own `__init__` (diffusers' arguments and defaults for that
    class, under `records_config`), builds the tables with `_build_tables`, and implements
    `set_timesteps` and `step`; samplers that work in sigmas (Euler) also override `scale_model_input`,
    `init_noise_sigma` and the forward process."""

    order = 1
    init_noise_sigma = 1.0
    _prediction_types: Tuple[str, ...] = PREDICTION_TYPES
    # What diffusers and mindone write for this scheduler in a saved pipeline's model_index.json: they
    # record `obj.__module__`, and a fewstep module there would make the folder unloadable without
    # fewstep (and by mindone at all). The config fewstep saves is diffusers' own, so the folder names
    # diffusers' class of the same name, which reads it with the same numbers. Set per subclass.
    _saved_as_module: Optional[str] = None
    # Set only on the classes `fewstep/backends/scheduler_interop.py` builds (a fewstep class with diffusers' or
    # mindone's mixins): the library, and the fewstep class it was built on. The core's classes derive from no
    # library's, whatever is imported.
    _interop_library: Optional[str] = None
    _interop_base: Optional[type] = None

    def _build_tables(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                      rescale_betas_zero_snr, set_alpha_to_one=None, zero_snr_alpha_cumprod=None) -> None:
        """Validate the schedule's config (before anything is built) and build the tables and the empty state.

        `set_alpha_to_one` gives DDIM's `final_alpha_cumprod` (None: no such attribute, as diffusers' Euler samplers
        have none). `zero_snr_alpha_cumprod` is what the Euler samplers put in place of the last alphas_cumprod,
        which rescale_betas_zero_snr makes 0: the first sigma stays finite and an epsilon model works. Without
        it, zero terminal SNR with epsilon prediction is refused."""
        T = as_int(num_train_timesteps, "num_train_timesteps")
        if T < 1:
            raise ValueError(f"num_train_timesteps must be at least 1, got {T}.")
        if prediction_type not in self._prediction_types:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; use one of "
                f"{', '.join(map(repr, self._prediction_types))} "
                f"(what the UNet predicts: the noise, the clean sample, or the velocity)."
            )
        if rescale_betas_zero_snr and prediction_type == "epsilon" and zero_snr_alpha_cumprod is None:
            raise ValueError(
                "rescale_betas_zero_snr=True makes alphas_cumprod[-1] == 0, where an epsilon-prediction model cannot "
                "recover x0 (division by zero, NaN at the first step). Use prediction_type='v_prediction' (what "
                "zero-SNR models are trained with), or rescale_betas_zero_snr=False."
            )
        # trained_betas of another length than num_train_timesteps are kept as given, as diffusers keeps them
        # (its own test_trained_betas builds 1000 training timesteps from 2 betas); set_timesteps refuses a
        # schedule that reaches past the table, where diffusers would fail with an IndexError at the step.
        betas = make_betas(beta_schedule, T, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        if self._saved_as_module:
            self.__module__ = self._saved_as_module  # an instance attribute: the class keeps its own
        self.betas = betas
        self.alphas = (np.float32(1.0) - betas).astype(np.float32)
        self.alphas_cumprod = alphas_cumprod(betas)
        if rescale_betas_zero_snr and zero_snr_alpha_cumprod is not None:
            self.alphas_cumprod[-1] = zero_snr_alpha_cumprod
        if set_alpha_to_one is not None:
            # diffusers' attribute, for code that reads it; a schedule never steps to a timestep below 0,
            # so the step itself has no use for it.
            self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self._alphas_cumprod_list = [float(a) for a in self.alphas_cumprod]  # Python floats: fast scalar lookups

        self.num_inference_steps: Optional[int] = None
        self.timesteps = np.arange(T, dtype=np.int64)[::-1].copy()
        self.custom_timesteps = False
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._coefficient_cache: dict = {}

    @classmethod
    def _get_compatibles(cls) -> list:
        names = {cls.__name__, *cls._compatibles}
        return [c for c in _scheduler_classes() if c.__name__ in names]

    @property
    def compatibles(self) -> list:
        """The scheduler classes that can be built from this scheduler's config (`from_config`)."""
        return self._get_compatibles()

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])

    # -- schedule and step index -----------------------------------------------------------

    def _check_within_betas(self, values: np.ndarray) -> None:
        """A schedule whose timesteps all have a beta: trained_betas shorter than num_train_timesteps leave the
        upper timesteps without one (diffusers indexes past its table at the first step: an IndexError)."""
        have = len(self._alphas_cumprod_list)
        if len(values) and int(np.max(values)) >= have:
            raise ValueError(
                f"This schedule reaches timestep {int(np.max(values))} but trained_betas has only {have} values "
                f"(num_train_timesteps={self.config['num_train_timesteps']}); pass one beta per training timestep, "
                f"or num_train_timesteps={have}."
            )

    def _set_timesteps_array(self, values: np.ndarray, anchor: Any = None) -> None:
        # The host copy (a Python list: the step indexes it once per call, and list indexing is cheap)
        # is what the scheduler computes with; the view is what users and pipelines read.
        self._timestep_list = values.tolist()
        if anchor is None:
            self._timesteps_view = values
        else:
            self._timesteps_view = backend_of(anchor).from_numpy(values, like=anchor, dtype="int64")

    @property
    def timesteps(self):
        """The inference timesteps, descending: a NumPy int64 array, or a tensor on the device the last
        `set_timesteps(device=...)` named."""
        return self._timesteps_view

    @timesteps.setter
    def timesteps(self, value) -> None:
        # A framework tensor assigned by a pipeline stays that tensor (its type and device), as it would
        # on diffusers' schedulers; anything else becomes a NumPy int64 array.
        host = np.asarray(value.tolist() if hasattr(value, "tolist") else list(value), dtype=np.int64).reshape(-1)
        self._set_timesteps_array(host)
        if not isinstance(value, (np.ndarray, list, tuple)) and hasattr(value, "tolist"):
            self._timesteps_view = value

    @property
    def step_index(self) -> Optional[int]:
        """Index into `timesteps` of the next step; None until the first step (or set_begin_index)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index of the first step, set by img2img pipelines through `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at `timesteps[begin_index]` (img2img pipelines that slice the schedule).

        Args:
            begin_index (`int`, *optional*, defaults to 0):
                The index of the first step.
        """
        begin_index = as_int(begin_index, "begin_index")
        if begin_index < 0:
            raise ValueError(f"begin_index must be non-negative, got {begin_index}.")
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Optional[Sequence[int]] = None) -> int:
        """Position of `timestep` in the schedule (the second match if it occurs twice, as diffusers).

        Args:
            timestep (`int` or a one-element tensor):
                A timestep of the schedule.
            schedule_timesteps (`List[int]` or a tensor, *optional*):
                The schedule to search; `self.timesteps` when not given.

        Returns:
            `int`: the index.
        """
        schedule = self._timestep_list if schedule_timesteps is None else _as_list(schedule_timesteps)
        return index_for_timestep(schedule, timestep_as_int(timestep, len(self)))

    def _first_index(self, timestep: int) -> int:
        if self._begin_index is not None:
            return self._begin_index
        return index_for_timestep(self._timestep_list, timestep)

    def _begin_step(self, timestep: Any) -> Tuple[int, int]:
        """(timestep as int, index of this step); validates but does not move the step index."""
        if self.num_inference_steps is None:
            raise ValueError(
                "The scheduler has no timesteps yet: call scheduler.set_timesteps(num_inference_steps) before step()."
            )
        t = timestep_as_int(timestep, len(self._alphas_cumprod_list))
        index = self._step_index
        if index is None:
            index = self._first_index(t)
        return t, index

    def scale_model_input(self, sample: Any, timestep: Optional[int] = None) -> Any:
        """Identity: samplers in alpha parameterisation take the noisy sample unscaled (init_noise_sigma is 1).

        Args:
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The noisy sample, returned as is.
            timestep (`int`, *optional*):
                Unused.

        Returns:
            The sample.
        """
        return sample

    def previous_timestep(self, timestep: Any):
        """The timestep after `timestep` in the schedule, -1 after the last one (t - 1 before set_timesteps).

        Args:
            timestep (`int` or a one-element tensor):
                A timestep of the schedule.

        Returns:
            A NumPy int64 scalar while `timesteps` is a NumPy array; a 0-d tensor of the timesteps' framework and
            device once `set_timesteps(device=...)` made them tensors. Either has `.item()`, as diffusers' tensor.
        """
        t = timestep_as_int(timestep, len(self))
        if self.custom_timesteps or self.num_inference_steps:
            schedule = self._timestep_list
            if t not in schedule:
                raise ValueError(f"Timestep {t} is not in the scheduler's timesteps {schedule}.")
            index = schedule.index(t)
            previous = -1 if index == len(schedule) - 1 else schedule[index + 1]
        else:
            previous = t - 1
        view = self._timesteps_view
        if isinstance(view, np.ndarray):
            return np.int64(previous)
        return backend_of(view).from_numpy(np.asarray(previous, dtype=np.int64), like=view, dtype="int64")

    # -- forward process -------------------------------------------------------------------

    def _alpha_scalings(self, timesteps: Any, dtype: str, ops) -> Tuple[np.ndarray, np.ndarray]:
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) per timestep, rounded as diffusers rounds them:
        in float32 for float32 (and lower-precision) samples, in float64 for float64 samples."""
        if ops.is_tensor(timesteps):
            timesteps = ops.to_numpy(timesteps)
        t = np.asarray(timesteps).reshape(-1)
        if t.size == 0:
            raise ValueError("`timesteps` is empty; pass one timestep, or one per batch item.")
        if not np.all(np.equal(np.mod(t, 1), 0)):
            raise ValueError(f"`timesteps` must be integers, got {t.tolist()}.")
        t = t.astype(np.int64)
        have = len(self._alphas_cumprod_list)  # num_train_timesteps, or the length of trained_betas
        if t.min() < 0 or t.max() >= have:
            raise ValueError(f"`timesteps` {t.tolist()} must lie in 0..{have - 1}.")
        work = np.float64 if dtype == "float64" else np.float32
        alpha = self.alphas_cumprod[t].astype(work)
        signal = np.sqrt(alpha.astype(np.float64)).astype(work)  # correctly rounded sqrt in `work` precision
        noise = np.sqrt((work(1.0) - alpha).astype(np.float64)).astype(work)
        return signal, noise

    def _broadcast(self, values: np.ndarray, like: Any, ops):
        """A per-batch coefficient: a Python float when all equal, else a (B, 1, ..., 1) tensor."""
        if np.all(values == values[0]):
            return float(values[0])
        shape = (len(values),) + (1,) * (len(ops.shape(like)) - 1)
        return ops.from_numpy(values.reshape(shape), like=like)

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any:
        """Forward diffusion: x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise (DDPM eq. 4).

        Args:
            original_samples (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The clean samples x_0.
            noise (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                Standard normal noise of the same shape and framework.
            timesteps (`int`, `List[int]`, an array or a tensor):
                One timestep for the batch, or one per batch item.

        Returns:
            The noisy samples, of the samples' type and dtype.
        """
        ops = backend_of(original_samples, noise)
        signal, noise_scale = self._alpha_scalings(timesteps, ops.dtype_name(original_samples), ops)
        a = self._broadcast(signal, original_samples, ops)
        b = self._broadcast(noise_scale, original_samples, ops)
        return a * original_samples + b * noise

    def get_velocity(self, sample: Any, noise: Any, timesteps: Any) -> Any:
        """The v-prediction target (Salimans & Ho 2022): v = sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * x_0.

        Args:
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The clean samples x_0.
            noise (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The noise added to them.
            timesteps (`int`, `List[int]`, an array or a tensor):
                One timestep for the batch, or one per batch item.

        Returns:
            The velocity, of the sample's type and dtype.
        """
        ops = backend_of(sample, noise)
        signal, noise_scale = self._alpha_scalings(timesteps, ops.dtype_name(sample), ops)
        a = self._broadcast(signal, sample, ops)
        b = self._broadcast(noise_scale, sample, ops)
        return a * noise - b * sample


class ConsistencyScheduler(DiscreteScheduler):
    """Shared facade of TCDScheduler and LCMScheduler (a consistency-model family sampler): diffusers' config for
    them, and timesteps picked from the distillation grid (`timesteps.select_timesteps`). LCMScheduler's `__init__`
    takes these arguments plus NitroFusion's `shifted_timestep`.

    Subclasses implement `step`. Construction validates the config (unknown beta_schedule or
    prediction_type, zero-terminal-SNR with epsilon prediction) instead of failing at the first step."""

    # TCD: an explicit original_inference_steps argument selects from all training timesteps.
    _full_range_if_explicit = False

    @records_config
    @schedule_docstring(
        timestep_spacing="Kept for compatibility; the timesteps follow the distillation grid.",
        steps_offset="Kept for compatibility; the consistency schedulers do not offset timesteps.",
    )
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        """Build a scheduler; arguments and defaults are diffusers' TCDScheduler / LCMScheduler's.

        Args:
            {schedule_arguments}
            original_inference_steps (`int`, *optional*, defaults to 50):
                The size of the distillation grid the timesteps are picked from.
            clip_sample (`bool`, *optional*, defaults to False):
                LCM: clip the predicted x0 to [-clip_sample_range, clip_sample_range]. TCD keeps it for compatibility.
            clip_sample_range (`float`, *optional*, defaults to 1.0):
                The clipping bound.
            set_alpha_to_one (`bool`, *optional*, defaults to True):
                Kept for compatibility (`final_alpha_cumprod`); a schedule never steps below timestep 0.
            thresholding (`bool`, *optional*, defaults to False):
                LCM: Imagen's dynamic thresholding of the predicted x0.
            dynamic_thresholding_ratio (`float`, *optional*, defaults to 0.995):
                The quantile of |x0| dynamic thresholding clips at.
            sample_max_value (`float`, *optional*, defaults to 1.0):
                The largest threshold dynamic thresholding uses.
            timestep_scaling (`float`, *optional*, defaults to 10.0):
                LCM: the timestep scale of the boundary-condition scalings.

        Raises ValueError for an unknown beta_schedule or prediction_type, zero-terminal SNR with epsilon
        prediction, before anything is built; trained_betas of another length than num_train_timesteps are
        kept as diffusers keeps them, and `set_timesteps` refuses a schedule that reaches past them.
        """
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                           rescale_betas_zero_snr, set_alpha_to_one)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Any = None,
        original_inference_steps: Optional[int] = None,
        timesteps: Optional[Sequence[int]] = None,
        strength: float = 1.0,
    ) -> None:
        """Choose the inference timesteps (run before the denoising loop).

        Args:
            num_inference_steps (`int`, *optional*):
                How many steps; picked evenly from the distillation grid. Exclusive with `timesteps`.
            device (`str` or `torch.device`, *optional*):
                Where `timesteps` should live. None keeps them a host NumPy int64 array; a `torch.device` (or a
                device string once torch is imported) makes them a torch int64 tensor there, as diffusers'
                pipelines expect. The schedule is planned on the host either way.
            original_inference_steps (`int`, *optional*):
                Size of the distillation grid (config default 50). For TCD, passing it (even 50) selects from
                all training timesteps, as in diffusers.
            timesteps (`List[int]`, *optional*):
                A custom strictly descending list of timesteps in [0, num_train_timesteps).
            strength (`float`, *optional*, defaults to 1.0):
                In (0, 1]; img2img starts at a lower noise level. With `num_inference_steps`, the grid is cut to
                its first int(original_inference_steps * strength) points and the steps are picked from it; with
                custom `timesteps`, the last int(len * strength) entries are kept.

        Deliberate difference from diffusers: with custom `timesteps` and strength < 1, `num_inference_steps`
        is set to the number of timesteps kept (diffusers keeps the full length, so its LCM adds noise on the
        last step and its TCD draws one noise tensor more than it uses).

        Raises ValueError (and changes nothing) for invalid combinations; the message names the fix.
        """
        plan = select_timesteps(
            self.config["num_train_timesteps"],
            self.config["original_inference_steps"],
            num_inference_steps=num_inference_steps,
            original_inference_steps=original_inference_steps,
            timesteps=timesteps,
            strength=strength,
            full_range_if_explicit=self._full_range_if_explicit,
            order=self.order,
        )
        self._check_within_betas(plan.timesteps)
        self._set_planned_timesteps(plan.timesteps, device_anchor(device))
        self.num_inference_steps = plan.num_inference_steps
        self.custom_timesteps = plan.custom_timesteps
        self._step_index = None
        self._begin_index = None


    def _set_planned_timesteps(self, values: np.ndarray, anchor: Any) -> None:
        """Make the schedule `set_timesteps` planned the scheduler's (LCMScheduler shifts it here)."""
        self._set_timesteps_array(values, anchor)


_STEP_ARGUMENTS = """
            model_output (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The UNet's output for (sample, timestep).
            timestep (`int` or a one-element tensor):
                The current timestep, an element of `timesteps`.
            sample (`np.ndarray`, `torch.Tensor` or `mindspore.Tensor`):
                The current noisy sample x_t, of model_output's framework."""


def step_docstring(step):
    """Decorator for a scheduler's `step`: its docstring's `{step_arguments}` becomes the entries of the
    arguments every consistency step takes, written once here."""
    step.__doc__ = step.__doc__.replace("\n            {step_arguments}", _STEP_ARGUMENTS)
    return step


def _scheduler_classes() -> list:
    """fewstep's scheduler classes (the interop classes built on them left out)."""
    found, stack = [], [DiscreteScheduler]
    while stack:
        cls = stack.pop()
        if cls._interop_library is None:
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def _as_list(schedule) -> List[int]:
    if hasattr(schedule, "tolist"):
        schedule = schedule.tolist()
    return [int(t) for t in schedule]
