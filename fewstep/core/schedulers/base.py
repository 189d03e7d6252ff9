"""What TCD and LCM share: configuration, timestep selection, step bookkeeping, add_noise.

Both schedulers plan in NumPy and apply a step as a linear combination of tensors with Python-float
coefficients (see design.md, "Schedulers"). This file holds the parts that are not the step itself:

- `SchedulerConfig`: a read-only dict with attribute access, like diffusers' `FrozenDict`, so
  `scheduler.config` can be handed to diffusers' `from_config` (which only accepts dicts);
- `select_timesteps`: the pure function behind `set_timesteps`, validating everything before the
  scheduler's state is touched;
- `ConsistencyScheduler`: the facade both schedulers inherit (config round trip, step index,
  `add_noise`, `get_velocity`, ...). It behaves like diffusers' scheduler so it can be dropped into a
  diffusers or mindone pipeline, with `timesteps` kept as a host NumPy int64 array.

The numbers follow diffusers' TCDScheduler/LCMScheduler; shared/reference/tcd-lcm.md lists the traps.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fewstep.backends import backend_of
from fewstep.core.schedules import alphas_cumprod, make_betas, rescale_zero_terminal_snr

logger = logging.getLogger("fewstep")

SCHEDULER_CONFIG_NAME = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# ---------------------------------------------------------------------------------------------
# Configuration


class SchedulerConfig(dict):
    """A frozen dict with attribute access (`config.num_train_timesteps`).

    A real `dict` subclass because diffusers' `from_config` treats anything else as a path; frozen
    because changing it would not recompute the tables built from it. To change a value, build a new
    scheduler: `TCDScheduler.from_config(scheduler.config, prediction_type="v_prediction")`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"The scheduler config has no key {name!r}.") from None

    def _frozen(self, *args, **kwargs):
        raise TypeError(
            "A scheduler config is read-only; build a new scheduler with the change instead, e.g. "
            "TCDScheduler.from_config(scheduler.config, prediction_type='v_prediction')."
        )

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _frozen
    update = pop = popitem = setdefault = clear = _frozen

    def __reduce__(self):
        # dict's default pickling re-inserts items with __setitem__, which is frozen.
        return (SchedulerConfig, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return SchedulerConfig({k: copy.deepcopy(v, memo) for k, v in self.items()})


def _json_ready(value):
    """Config values as JSON can hold them (trained_betas may be a NumPy array)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _records_config(init):
    """Decorator for `__init__`: store every constructor argument in `self._internal_dict`, plus
    `_use_default_values` naming the arguments that were not given. diffusers reads that list when a
    config moves to another scheduler class, so the target class keeps its own defaults for them."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        given = [name for name in bound.arguments if name != "self"]
        bound.apply_defaults()
        init(self, *args, **kwargs)
        values = {name: value for name, value in bound.arguments.items() if name != "self"}
        defaults = sorted(set(values) - set(given))
        config = {"_class_name": type(self).__name__, **values}
        if defaults:
            config["_use_default_values"] = defaults
        object.__setattr__(self, "_internal_dict", SchedulerConfig(config))

    return wrapper


def read_config_file(path: Union[str, os.PathLike], subfolder: Optional[str] = None) -> Dict[str, Any]:
    """A scheduler config dict from a `scheduler_config.json` path or a folder holding one.

    A pipeline folder (model_index.json + scheduler/) needs `subfolder="scheduler"`, as in diffusers."""
    path = os.fspath(path)
    if subfolder:
        path = os.path.join(path, subfolder)
    if os.path.isdir(path):
        candidate = os.path.join(path, SCHEDULER_CONFIG_NAME)
        if not os.path.isfile(candidate):
            nested = os.path.join(path, "scheduler", SCHEDULER_CONFIG_NAME)
            hint = (
                " It looks like a pipeline folder: pass subfolder='scheduler'." if os.path.isfile(nested) else ""
            )
            raise FileNotFoundError(f"No {SCHEDULER_CONFIG_NAME} in the folder {path!r}.{hint}")
        path = candidate
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} is neither a folder nor a {SCHEDULER_CONFIG_NAME} file. fewstep reads local files only; "
            f"download a hub repository first, e.g. with huggingface_hub.snapshot_download(repo_id)."
        )
    try:
        with open(path, "r", encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path!r} is not a valid JSON scheduler config: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} holds a JSON {type(config).__name__}, not a scheduler config object.")
    return config


# ---------------------------------------------------------------------------------------------
# Step outputs


@dataclass
class StepOutput:
    """A step's tensors: attribute access, `out[0]` / `out["prev_sample"]`, or `to_tuple()`."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def keys(self) -> List[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __len__(self) -> int:
        return len(fields(self))


# ---------------------------------------------------------------------------------------------
# Timestep selection (pure)


def _as_int(value, what: str) -> int:
    """An integer argument, refusing floats with a fraction (and bools) with a message naming it."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"`{what}` must be an integer, got {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise ValueError(f"`{what}` must be an integer, got {value!r}.")


def _min_strength(steps: int, original_steps: int) -> float:
    """The smallest 3-decimal strength with int(original_steps * strength) >= steps (float64 truncation
    makes steps / original_steps itself too small, e.g. int(50 * 0.58) == 28)."""
    strength = math.ceil(steps / original_steps * 1000) / 1000
    while int(original_steps * strength) < steps:
        strength = round(strength + 0.001, 3)
    return strength


def distillation_timesteps(
    num_train_timesteps: int, original_steps: int, strength: float, full_range: bool
) -> np.ndarray:
    """The ascending grid the inference timesteps are picked from.

    LCM/TCD were distilled on a DDIM-like grid of `original_steps` points with skip k = T // original_steps:
    [k-1, 2k-1, ...] (19, 39, ..., 999 for 1000/50). `strength` < 1 (img2img) keeps the first
    int(original_steps * strength) points; the product is a float64 truncated by int(), as in diffusers.
    `full_range` (TCD given an explicit original_inference_steps) uses every timestep 0..int(T*strength)-1."""
    if full_range:
        return np.arange(int(num_train_timesteps * strength), dtype=np.int64)
    k = num_train_timesteps // original_steps
    return np.arange(1, int(original_steps * strength) + 1, dtype=np.int64) * k - 1


def evenly_spaced_pick(grid: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """`num_inference_steps` timesteps from the grid, descending, at floored evenly spaced indices
    (diffusers#5836; the older `grid[::-skip][:n]` misses the low end for n = 3, 4, 6, 8, ...)."""
    descending = grid[::-1]
    idx = np.floor(np.linspace(0, len(descending), num=num_inference_steps, endpoint=False)).astype(np.int64)
    return descending[idx]


@dataclass(frozen=True)
class TimestepPlan:
    timesteps: np.ndarray  # int64, descending
    num_inference_steps: int
    custom_timesteps: bool


def _check_custom_timesteps(timesteps, num_train_timesteps: int) -> List[int]:
    values = timesteps
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # NumPy arrays and framework tensors
    if isinstance(values, numbers.Number):
        values = [values]
    values = [_as_int(v, "timesteps") for v in values]
    if not values:
        raise ValueError("`timesteps` is empty; pass at least one timestep, e.g. timesteps=[999, 499].")
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise ValueError(
                f"`timesteps` must be strictly descending, but {values[i]} follows {values[i - 1]} in {values}; "
                f"sort them from high noise to low, e.g. sorted(set(timesteps), reverse=True)."
            )
    if values[0] >= num_train_timesteps:
        raise ValueError(
            f"`timesteps` must be below num_train_timesteps={num_train_timesteps}, but starts at {values[0]}; "
            f"the largest valid timestep is {num_train_timesteps - 1}."
        )
    if values[-1] < 0:
        raise ValueError(f"`timesteps` must be non-negative, but ends at {values[-1]}; the smallest valid timestep is 0.")
    return values


def select_timesteps(
    num_train_timesteps: int,
    config_original_steps: Optional[int],
    num_inference_steps: Optional[int] = None,
    original_inference_steps: Optional[int] = None,
    timesteps: Optional[Sequence[int]] = None,
    strength: float = 1.0,
    full_range_if_explicit: bool = False,
    order: int = 1,
) -> TimestepPlan:
    """The inference timesteps of a consistency scheduler, as diffusers' `set_timesteps` picks them.

    Validates everything and touches no state, so a failed `set_timesteps` leaves the scheduler as it was.
    `full_range_if_explicit` is TCD's rule: an `original_inference_steps` *argument* (even 50) selects
    from all training timesteps instead of the k-grid (reference §3).

    Deliberate difference from diffusers: with custom `timesteps` and strength < 1 the list is cut to
    its last int(len * strength) entries AND `num_inference_steps` becomes the cut length, so the final
    step is recognised as final (diffusers keeps the full length, so LCM re-noises its last output and
    TCD draws one extra noise tensor; reference §13 P7)."""
    T = _as_int(num_train_timesteps, "num_train_timesteps")
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError(
            "Pass exactly one of `num_inference_steps` (e.g. set_timesteps(4)) or `timesteps` "
            "(e.g. set_timesteps(timesteps=[999, 759, 499, 259]))."
        )
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0:
        raise ValueError(
            f"`strength` must be in (0, 1], got {strength!r}: 1.0 starts from pure noise (text-to-image), "
            f"smaller values keep more of the input image (img2img, e.g. 0.5)."
        )

    explicit = original_inference_steps is not None
    original_steps = original_inference_steps if explicit else config_original_steps
    if original_steps is None:
        raise ValueError(
            "The config's original_inference_steps is None; pass original_inference_steps=50 (the distillation "
            "grid of the LCM/TCD checkpoints)."
        )
    original_steps = _as_int(original_steps, "original_inference_steps")
    if original_steps < 1:
        raise ValueError(f"`original_inference_steps` must be at least 1, got {original_steps}.")
    full_range = full_range_if_explicit and explicit
    if not full_range and original_steps > T:
        raise ValueError(
            f"`original_inference_steps`={original_steps} cannot exceed num_train_timesteps={T}: the distillation "
            f"grid is a subset of the training timesteps. Use at most {T} (the checkpoints use 50)."
        )
    grid = distillation_timesteps(T, original_steps, strength, full_range)

    if timesteps is not None:
        values = _check_custom_timesteps(timesteps, T)
        _warn_unusual_custom(values, grid, T, original_steps, strength)
        # img2img: keep the last int(len * strength) timesteps (StableDiffusionImg2ImgPipeline.get_timesteps).
        keep = min(int(len(values) * strength), len(values))
        start = max(len(values) - keep, 0) * order
        kept = np.array(values[start:], dtype=np.int64)
        if len(kept) == 0:
            raise ValueError(
                f"strength={strength} keeps int({len(values)} * {strength}) = 0 of the {len(values)} custom timesteps; "
                f"raise strength to at least {_min_strength(1, len(values))} or pass more timesteps."
            )
        return TimestepPlan(kept, len(kept), True)

    n = _as_int(num_inference_steps, "num_inference_steps")
    if n < 1:
        raise ValueError(f"`num_inference_steps` must be at least 1, got {n}.")
    if n > T:
        raise ValueError(f"`num_inference_steps`={n} cannot exceed num_train_timesteps={T}.")
    if n > len(grid):
        if full_range:
            source = f"int(num_train_timesteps * strength) = int({T} * {strength}) = {len(grid)}"
            fix = f"raise strength to at least {_min_strength(n, T)}"
        else:
            source = f"int(original_inference_steps * strength) = int({original_steps} * {strength}) = {len(grid)}"
            fix = (
                f"raise strength to at least {_min_strength(n, original_steps)}"
                if n <= original_steps
                else f"pass original_inference_steps >= {n}"
            )
        raise ValueError(
            f"`num_inference_steps`={n} is more than the {len(grid)} timesteps available: {source}. "
            f"Use num_inference_steps <= {len(grid)}, or {fix}."
        )
    if n > original_steps:
        raise ValueError(
            f"`num_inference_steps`={n} cannot exceed original_inference_steps={original_steps}: the schedule is a "
            f"subset of the {original_steps}-step distillation grid. Use at most {original_steps} steps, or pass "
            f"original_inference_steps >= {n}."
        )
    return TimestepPlan(evenly_spaced_pick(grid, n), n, False)


def _warn_unusual_custom(values: List[int], grid: np.ndarray, T: int, original_steps: int, strength: float) -> None:
    """The warnings diffusers gives for custom schedules that are legal but off the trained grid."""
    if strength == 1.0 and values[0] != T - 1:
        logger.warning(
            f"The custom timesteps start at {values[0]}, not at num_train_timesteps - 1 = {T - 1}; the first step "
            f"will not start from pure noise."
        )
    on_grid = set(grid.tolist())
    off_grid = [v for v in values[1:] if v not in on_grid]
    if off_grid:
        logger.warning(f"The custom timesteps {off_grid} are not on the distillation grid; results may degrade.")
    if len(values) > original_steps:
        logger.warning(
            f"{len(values)} custom timesteps are more than original_inference_steps={original_steps}; results may degrade."
        )


def index_for_timestep(schedule: Sequence[int], timestep: int) -> int:
    """Position of `timestep` in the schedule; the second match if it occurs more than once.

    diffusers takes the second match so an img2img run whose first timestep is duplicated does not
    skip a sigma; kept for identical indexing."""
    matches = [i for i, t in enumerate(schedule) if t == timestep]
    if not matches:
        raise ValueError(
            f"Timestep {timestep} is not in the scheduler's timesteps {list(schedule)}; step with the values of "
            f"scheduler.timesteps (after set_timesteps), or call set_begin_index(i) to start at index i."
        )
    return matches[1] if len(matches) > 1 else matches[0]


def timestep_as_int(timestep: Any, num_train_timesteps: int) -> int:
    """A timestep given as a Python/NumPy number or a one-element tensor of any framework, as an int.

    Reading a framework tensor is one host read of a scalar (the timestep already is a host value in
    every pipeline loop, which iterates over `scheduler.timesteps`)."""
    if type(timestep) is not int:
        if hasattr(timestep, "item"):
            timestep = timestep.item()  # NumPy scalars/arrays, torch and MindSpore tensors with one element
        timestep = _as_int(timestep, "timestep")
    if not 0 <= timestep < num_train_timesteps:
        raise ValueError(f"timestep {timestep} is outside the training range 0..{num_train_timesteps - 1}.")
    return timestep


# ---------------------------------------------------------------------------------------------
# The facade


class ConsistencyScheduler:
    """Shared facade of TCDScheduler and LCMScheduler (a consistency-model family sampler).

    Subclasses implement `step`. Construction validates the config (unknown beta_schedule or
    prediction_type, zero-terminal-SNR with epsilon prediction) instead of failing at the first step."""

    order = 1
    init_noise_sigma = 1.0
    config_name = SCHEDULER_CONFIG_NAME
    # TCD: an explicit original_inference_steps argument selects from all training timesteps.
    _full_range_if_explicit = False

    @_records_config
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
        T = _as_int(num_train_timesteps, "num_train_timesteps")
        if T < 1:
            raise ValueError(f"num_train_timesteps must be at least 1, got {T}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; use one of {', '.join(map(repr, PREDICTION_TYPES))} "
                f"(what the UNet predicts: the noise, the clean sample, or the velocity)."
            )
        if rescale_betas_zero_snr and prediction_type == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr=True makes alphas_cumprod[-1] == 0, where an epsilon-prediction model cannot "
                "recover x0 (division by zero, NaN at the first step). Use prediction_type='v_prediction' (what "
                "zero-SNR models are trained with), or rescale_betas_zero_snr=False."
            )
        betas = make_betas(beta_schedule, T, beta_start, beta_end, trained_betas)
        if len(betas) != T:
            raise ValueError(
                f"trained_betas has {len(betas)} values but num_train_timesteps={T}; pass num_train_timesteps={len(betas)}."
            )
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = (np.float32(1.0) - betas).astype(np.float32)
        self.alphas_cumprod = alphas_cumprod(betas)
        # Only used for a previous timestep < 0, which step() never produces; kept for API parity.
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self._alpha_list = [float(a) for a in self.alphas_cumprod]  # Python floats: fast scalar lookups

        self.num_inference_steps: Optional[int] = None
        self.timesteps = np.arange(T, dtype=np.int64)[::-1].copy()
        self.custom_timesteps = False
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._coefficient_cache: Dict[tuple, tuple] = {}
        self._cache_config = None

    # -- configuration ---------------------------------------------------------------------

    @property
    def config(self) -> SchedulerConfig:
        return self._internal_dict

    @classmethod
    def from_config(
        cls,
        config: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        return_unused_kwargs: bool = False,
        subfolder: Optional[str] = None,
        **kwargs,
    ):
        """A scheduler from a config dict (e.g. another scheduler's `.config`, diffusers' included), a
        folder holding scheduler_config.json (`subfolder="scheduler"` for a pipeline folder), or the path of
        that file. Keyword arguments override config values.

        Keys the constructor does not take (an SD pipeline's `skip_prk_steps`, `interpolation_type`, ...)
        are ignored but kept in `.config`, as diffusers keeps them, so they survive a round trip; keys a
        diffusers config lists in `_use_default_values` are dropped so this class's defaults apply."""
        if config is None:
            config = kwargs.pop("pretrained_model_name_or_path", None)
        if isinstance(config, Mapping):
            source = dict(config)
        elif isinstance(config, (str, os.PathLike)):
            source = read_config_file(config, subfolder)
        else:
            raise ValueError(
                f"from_config takes a config dict, a folder or a scheduler_config.json path, not a "
                f"{type(config).__name__}."
            )
        dropped = set(source.get("_use_default_values", []) or [])
        source = {k: v for k, v in source.items() if k not in dropped and k != "_use_default_values"}

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        init = {}
        for name in params:
            if name in kwargs:
                init[name] = kwargs.pop(name)
            elif name in source:
                init[name] = source[name]
        hidden = {k: v for k, v in source.items() if k not in init}
        ignored = sorted(k for k in hidden if not k.startswith("_"))
        if ignored:
            logger.info(f"{cls.__name__}.from_config ignores config keys it does not use: {ignored}")
        if kwargs:
            logger.warning(f"{cls.__name__}.from_config ignores unknown keyword arguments: {sorted(kwargs)}")

        scheduler = cls(**init)
        merged = {**scheduler.config, **hidden, "_class_name": cls.__name__}
        object.__setattr__(scheduler, "_internal_dict", SchedulerConfig(merged))
        if return_unused_kwargs:
            return scheduler, {**kwargs, **hidden}
        return scheduler

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], subfolder: Optional[str] = None, **kwargs):
        """Like diffusers' `from_pretrained`, for local folders: `from_pretrained(pipeline_dir, subfolder="scheduler")`."""
        return cls.from_config(read_config_file(pretrained_model_name_or_path, subfolder), **kwargs)

    def to_json_string(self) -> str:
        config = {k: _json_ready(v) for k, v in self.config.items() if k != "_use_default_values"}
        config["_class_name"] = type(self).__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: Union[str, os.PathLike]) -> str:
        """Write `scheduler_config.json` into the folder (created if missing); diffusers' and mindone's
        `from_pretrained(folder)` read it. Returns the file's path."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_config needs a folder, but {save_directory!r} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    save_pretrained = save_config

    def register_to_config(self, **kwargs) -> None:
        """Merge keys into the config (diffusers pipelines use this to patch legacy configs). Tables built
        at construction (betas, alphas_cumprod) are not recomputed; step-time options are."""
        merged = {**self.config, **kwargs}
        object.__setattr__(self, "_internal_dict", SchedulerConfig(merged))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])

    # -- schedule and step index -----------------------------------------------------------

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
            num_inference_steps: how many steps; picked evenly from the distillation grid. Exclusive with `timesteps`.
            device: accepted for diffusers pipeline compatibility and ignored: `timesteps` stays a host
                NumPy int64 array (a loop reads each one as a Python int anyway).
            original_inference_steps: size of the distillation grid (config default 50).
            timesteps: a custom strictly descending list of timesteps in [0, num_train_timesteps).
            strength: in (0, 1]; img2img starts at a lower noise level. With `num_inference_steps`, the grid
                is cut to its first int(original_inference_steps * strength) points and the steps are
                picked from it; with custom `timesteps`, the last int(len * strength) entries are kept.

        Deliberate difference from diffusers: with custom `timesteps` and strength < 1,
        `num_inference_steps` is set to the number of timesteps kept (diffusers keeps the full length,
        so its LCM adds noise on the last step and its TCD draws one noise tensor more than it uses).

        Raises ValueError (and changes nothing) for invalid combinations; the message names the fix."""
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
        self.timesteps = plan.timesteps
        self.num_inference_steps = plan.num_inference_steps
        self.custom_timesteps = plan.custom_timesteps
        self._step_index = None
        self._begin_index = None

    @property
    def timesteps(self) -> np.ndarray:
        """The inference timesteps, descending, as a host NumPy int64 array."""
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value) -> None:
        # Kept with a Python-list copy: step() indexes it once per call, and list indexing is cheap.
        values = value.tolist() if hasattr(value, "tolist") else list(value)
        self._timesteps = np.asarray(values, dtype=np.int64).reshape(-1)
        self._timestep_list = self._timesteps.tolist()

    @property
    def step_index(self) -> Optional[int]:
        """Index into `timesteps` of the next step; None until the first step (or set_begin_index)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index of the first step, set by img2img pipelines through `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at `timesteps[begin_index]` (img2img pipelines that slice the schedule)."""
        begin_index = _as_int(begin_index, "begin_index")
        if begin_index < 0:
            raise ValueError(f"begin_index must be non-negative, got {begin_index}.")
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Optional[Sequence[int]] = None) -> int:
        schedule = self._timestep_list if schedule_timesteps is None else _as_list(schedule_timesteps)
        return index_for_timestep(schedule, timestep_as_int(timestep, len(self)))

    def _init_step_index(self, timestep: Any) -> None:
        self._step_index = self._first_index(timestep_as_int(timestep, len(self)))

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
        t = timestep_as_int(timestep, len(self._alpha_list))
        index = self._step_index
        if index is None:
            index = self._first_index(t)
        return t, index

    def _coefficients_for(self, key: tuple, compute) -> tuple:
        """Cached step coefficients: they depend only on the schedule, the timesteps and eta, so each
        combination is computed once (in NumPy float64) and later steps cost one dict lookup."""
        if self._cache_config is not self._internal_dict:  # the config was replaced (register_to_config)
            self._coefficient_cache = {}
            self._cache_config = self._internal_dict
        coefficients = self._coefficient_cache.get(key)
        if coefficients is None:
            if len(self._coefficient_cache) > 4096:
                self._coefficient_cache.clear()
            coefficients = self._coefficient_cache[key] = compute()
        return coefficients

    def scale_model_input(self, sample: Any, timestep: Optional[int] = None) -> Any:
        """Identity: consistency models take the noisy sample unscaled (init_noise_sigma is 1)."""
        return sample

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep after `timestep` in the schedule, -1 after the last one (t - 1 before set_timesteps)."""
        t = timestep_as_int(timestep, len(self))
        if self.custom_timesteps or self.num_inference_steps:
            schedule = self._timestep_list
            if t not in schedule:
                raise ValueError(f"Timestep {t} is not in the scheduler's timesteps {schedule}.")
            index = schedule.index(t)
            return -1 if index == len(schedule) - 1 else schedule[index + 1]
        return t - 1

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
        if t.min() < 0 or t.max() >= len(self):
            raise ValueError(f"`timesteps` {t.tolist()} must lie in 0..{len(self) - 1}.")
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
        """Forward diffusion: x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise (DDPM eq. 4),
        one timestep for the batch or one per batch item. Returns the samples' type and dtype."""
        ops = backend_of(original_samples, noise)
        signal, noise_scale = self._alpha_scalings(timesteps, ops.dtype_name(original_samples), ops)
        a = self._broadcast(signal, original_samples, ops)
        b = self._broadcast(noise_scale, original_samples, ops)
        return a * original_samples + b * noise

    def get_velocity(self, sample: Any, noise: Any, timesteps: Any) -> Any:
        """The v-prediction target (Salimans & Ho 2022): v = sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * x_0."""
        ops = backend_of(sample, noise)
        signal, noise_scale = self._alpha_scalings(timesteps, ops.dtype_name(sample), ops)
        a = self._broadcast(signal, sample, ops)
        b = self._broadcast(noise_scale, sample, ops)
        return a * noise - b * sample


def _as_list(schedule) -> List[int]:
    if hasattr(schedule, "tolist"):
        schedule = schedule.tolist()
    return [int(t) for t in schedule]


# ---------------------------------------------------------------------------------------------
# Shared step helpers (pure)


def linear_combination(a: Any, ca: float, b: Any, cb: float) -> Any:
    """ca * a + cb * b as a new tensor. Python-float coefficients keep the tensors' dtype on every
    backend (a float16 latent stays float16), and three elementwise ops is all a step term costs."""
    return a * ca + b * cb


def x0_and_eps_coefficients(alpha_t: float, prediction_type: str) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """x0 and epsilon as (coefficient of sample, coefficient of model_output), from x_t = sqrt(a) x0 + sqrt(1-a) eps.

    epsilon:      x0 = (x_t - sqrt(1-a) eps_hat) / sqrt(a)
    sample:       x0 = x0_hat;                eps = (x_t - sqrt(a) x0_hat) / sqrt(1-a)
    v_prediction: x0 = sqrt(a) x_t - sqrt(1-a) v;   eps = sqrt(1-a) x_t + sqrt(a) v   (Salimans & Ho 2022)
    Division by zero gives inf/NaN coefficients, as the reference's tensor arithmetic would."""
    a = np.float64(alpha_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb = np.sqrt(a), np.sqrt(1.0 - a)
        if prediction_type == "epsilon":
            x0, eps = (1.0 / sa, -sb / sa), (0.0, 1.0)
        elif prediction_type == "sample":
            x0, eps = (0.0, 1.0), (1.0 / sb, -sa / sb)
        elif prediction_type == "v_prediction":
            x0, eps = (sa, -sb), (sb, sa)
        else:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; use one of {', '.join(map(repr, PREDICTION_TYPES))}."
            )
    return (float(x0[0]), float(x0[1])), (float(eps[0]), float(eps[1]))
