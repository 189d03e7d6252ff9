"""Timestep selection: which of the training timesteps a consistency sampler visits.

`select_timesteps` is the pure function behind `set_timesteps`: it validates everything before any
scheduler state is touched, so a failed `set_timesteps` changes nothing. The numbers follow diffusers'
TCDScheduler / LCMScheduler `set_timesteps`; shared/reference/tcd-lcm.md §3 and §13 list the traps.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger("fewstep")



def as_int(value, what: str) -> int:
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
    values = [as_int(v, "timesteps") for v in values]
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
    T = as_int(num_train_timesteps, "num_train_timesteps")
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
    original_steps = as_int(original_steps, "original_inference_steps")
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

    n = as_int(num_inference_steps, "num_inference_steps")
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


class StepPosition(NamedTuple):
    """Where a step sits in its schedule: the one place the previous-timestep and last-step rules live."""

    timestep: int
    prev_timestep: Optional[int]  # the next timestep of the schedule; None after the last one
    last: bool                    # the final step: the samplers return their clean estimate, draw no noise


def step_position(timesteps: Sequence[int], step_index: int, timestep: Any,
                  num_inference_steps: Optional[int] = None) -> StepPosition:
    """The position of step `step_index` (at `timestep`) in `timesteps`.

    The step at index num_inference_steps - 1 is the last (num_inference_steps defaults to len(timesteps);
    with custom timesteps and img2img strength the two differ in diffusers, see select_timesteps)."""
    steps = len(timesteps) if num_inference_steps is None else num_inference_steps
    prev = int(timesteps[step_index + 1]) if step_index + 1 < len(timesteps) else None
    return StepPosition(int(timestep), prev, step_index == steps - 1)


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
        timestep = as_int(timestep, "timestep")
    if not 0 <= timestep < num_train_timesteps:
        raise ValueError(f"timestep {timestep} is outside the training range 0..{num_train_timesteps - 1}.")
    return timestep


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: Any, timestep_spacing: str,
                     steps_offset: int = 0) -> np.ndarray:
    """The inference timesteps of a DDIM-style scheduler, descending, as diffusers' `set_timesteps` spaces
    them (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):

    leading:  (0, k, 2k, ..., (n-1)k) + steps_offset with k = T // n (the lowest timestep is 0 + offset);
    trailing: round(T, T - T/n, ..., T/n) - 1 (starts at T - 1, the fully noised timestep);
    linspace: round(linspace(0, T - 1, n)).

    The NumPy expressions are diffusers', float steps included (`np.arange` with a float step), so the
    arrays are identical; only the leading spacing adds `steps_offset`, as in diffusers."""
    n = as_int(num_inference_steps, "num_inference_steps")
    if n < 1:
        raise ValueError(f"`num_inference_steps` must be at least 1, got {n}.")
    if n > num_train_timesteps:
        raise ValueError(
            f"`num_inference_steps`={n} cannot exceed num_train_timesteps={num_train_timesteps}: the model was "
            f"trained on {num_train_timesteps} timesteps. Use at most {num_train_timesteps} steps."
        )
    if timestep_spacing == "linspace":
        values = np.linspace(0, num_train_timesteps - 1, n).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        ratio = num_train_timesteps // n
        values = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        values += as_int(steps_offset, "steps_offset")
    elif timestep_spacing == "trailing":
        ratio = num_train_timesteps / n
        values = np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64)
        values -= 1
    else:
        raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; use one of "
                         f"{', '.join(map(repr, TIMESTEP_SPACINGS))}.")
    return values


def shift_timesteps(timesteps: np.ndarray, shifted_timestep: int, num_train_timesteps: int) -> np.ndarray:
    """NitroFusion's timestep shift: the timesteps the UNet is shown, t * shifted_timestep / T truncated.

    Computed as its model card's `TimestepShiftLCMScheduler` computes it on a torch int64 tensor: the
    product in int64, the division in float32 (torch's true division of integer tensors), truncated to
    int64 (`.long()`), so the shown timesteps are identical (999 -> 249 for shifted_timestep=250)."""
    product = np.asarray(timesteps, dtype=np.int64) * np.int64(shifted_timestep)
    return (product.astype(np.float32) / np.float32(num_train_timesteps)).astype(np.int64)


def python_timestep(timestep: Any) -> Union[int, float]:
    """A schedule's timestep as a Python number: an int when whole (TCD, LCM, DDIM and trailing Euler schedules),
    the float itself otherwise (Euler's linspace spacing and Karras sigmas give timesteps such as 411.41537).

    The pipelines' loop and the model wrappers use it: diffusers' and mindone's models read a NumPy float32 scalar
    as an integer and would truncate it, where diffusers' own pipelines pass the scheduler's float tensor, which a
    Python float gives the same time embedding as (both reach it as the same float32 value)."""
    value = float(timestep)
    return int(value) if value.is_integer() else value
