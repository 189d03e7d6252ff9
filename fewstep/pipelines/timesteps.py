"""Which timesteps a call runs: the scheduler's schedule for the call's steps (or custom timesteps, with
`original_inference_steps` passed on), cut by `strength` as diffusers' SD img2img and inpainting cut it, or by
`denoising_start` / `denoising_end` as diffusers' SDXL pipelines split a base+refiner run."""

from __future__ import annotations

import numpy as np

from fewstep.core import checks


def set_schedule(pipe, args, **options) -> np.ndarray:
    """The scheduler's timesteps for this call's `num_inference_steps` or custom `timesteps`
    (`original_inference_steps`, when given, goes to the scheduler too)."""
    if args.get("original_inference_steps") is not None:
        options["original_inference_steps"] = args["original_inference_steps"]
    if args["timesteps"] is not None:
        pipe.scheduler.set_timesteps(timesteps=list(args["timesteps"]), **options)
    else:
        pipe.scheduler.set_timesteps(args["num_inference_steps"], **options)
    return np.asarray(pipe.scheduler.timesteps)


def cut_schedule(pipe, schedule: np.ndarray, strength: float) -> np.ndarray:
    """The last int(n x strength) timesteps, as diffusers' img2img and inpainting pipelines cut them."""
    if strength == 1.0:
        return schedule
    n = len(schedule)
    t_start = max(n - min(int(n * strength), n), 0)
    if t_start >= n:
        raise ValueError(f"strength={strength} with {n} steps leaves no step to run; raise strength or "
                         f"num_inference_steps.")
    pipe.scheduler.set_begin_index(t_start)
    return schedule[t_start:]


def _cutoff(pipe, share: float) -> int:
    """The training timestep at which a share of the denoising is done (diffusers' discrete_timestep_cutoff)."""
    total = int(pipe.scheduler.config["num_train_timesteps"])
    return int(round(total - share * total))


def start_schedule(pipe, schedule: np.ndarray, denoising_start: float) -> np.ndarray:
    """The timesteps below `denoising_start`'s cutoff, as diffusers' SDXL img2img and inpainting start the
    refiner where the base stopped (strength is then ignored)."""
    keep = int((schedule < _cutoff(pipe, denoising_start)).sum())
    if keep == 0:
        raise ValueError(f"denoising_start={denoising_start} leaves no step of {len(schedule)} to run; lower it or "
                         f"raise num_inference_steps.")
    pipe.scheduler.set_begin_index(len(schedule) - keep)
    return schedule[len(schedule) - keep:]


def end_schedule(pipe, schedule: np.ndarray, denoising_end) -> np.ndarray:
    """The timesteps at or above `denoising_end`'s cutoff: the base of a base+refiner run stops there and hands
    its (still noisy) latents on with `output_type="latent"`."""
    if denoising_end is None:
        return schedule
    keep = int((schedule >= _cutoff(pipe, denoising_end)).sum())
    if keep == 0:
        raise ValueError(f"denoising_end={denoising_end} leaves no step of {len(schedule)} to run; raise it.")
    return schedule[:keep]


def check_denoising_range(args) -> None:
    """denoising_start in (0, 1), denoising_end in (0, 1], and start below end."""
    start, end = args.get("denoising_start"), args.get("denoising_end")
    hint = "It is the share of the denoising done where the base hands over to the refiner, e.g. 0.8."
    if start is not None and checks.in_range(start, "denoising_start", 0.0, 1.0, low_open=True, hint=hint) == 1.0:
        raise ValueError(f"denoising_start must be below 1: at 1 no step is left to run.{' ' + hint}")
    if end is not None:
        checks.in_range(end, "denoising_end", 0.0, 1.0, low_open=True, hint=hint)
    if start is not None and end is not None and float(start) >= float(end):
        raise ValueError(f"denoising_start={start} is not below denoising_end={end}: the run would have no steps; "
                         f"pass a start below the end.")
