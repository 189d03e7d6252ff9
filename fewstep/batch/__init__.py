"""Batch generation: a job of items (prompt, settings, seed) cut into fixed batches once, run by one
process, torchrun / accelerate or msrun ranks, or Ray actors, with atomic outputs and resume. An image
depends only on its item, never on the world size, the rank or the position in the job.

    import fewstep.batch
    job = fewstep.batch.load_job("prompts.jsonl")
    fewstep.batch.run(job, out="out/", batch_size=4)
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from fewstep.batch.job import Item, Job, JobError, Lora, derive_seed, load_job
from fewstep.batch.plan import plan_batches
from fewstep.batch.runner import RunConfig
from fewstep.batch.runner import run as _run

__all__ = ["Item", "Job", "JobError", "Lora", "RunConfig", "derive_seed", "load_job", "plan_batches", "run"]


def run(job, out: str, *, model: Optional[str] = None, backend: str = "torch", dtype: str = "float32",
        device: Optional[str] = None, batch_size: int = 4, threads: int = 1, deterministic: bool = False,
        allow_different_env: bool = False, engine: str = "local", num_workers: Optional[int] = None,
        rank: Optional[int] = None, world_size: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Run a job into a folder (or this rank's share of it, under torchrun / accelerate / msrun).

    Args:
        job (`Job` or `str`):
            A job from `load_job`, or the path of a job file.
        out (`str`):
            The job folder: images, done-records, manifest, environment, logs.
        model (`str`, *optional*):
            Model folder or hub id. When not given, the default of `fewstep generate`: the trained demo
            model (its few-step LoRA fused) when it can draw every item's prompt, else the tiny random-weight
            SD 1.5 pipeline (`fewstep.batch.runner.default_model` says which, and why).
        backend (`str`, *optional*, defaults to "torch"):
            "torch" or "mindspore".
        dtype (`str`, *optional*, defaults to "float32"):
            The models' dtype.
        device (`str`, *optional*):
            torch device.
        batch_size (`int`, *optional*, defaults to 4):
            Items per pipeline call; the batches are cut once, when the job starts, and fixed for resume.
        threads (`int`, *optional*, defaults to 1):
            CPU threads per process, pinned for the run (outputs are bitwise identical across world sizes only
            with the same thread count); torch's thread count and deterministic flag are given back afterwards.
        deterministic (`bool`, *optional*, defaults to False):
            Ask the framework for deterministic algorithms (CUDA / Ascend).
        allow_different_env (`bool`, *optional*, defaults to False):
            Resume a folder started with other versions, backend, device, dtype or threads.
        engine (`str`, *optional*, defaults to "local"):
            "local" (this process is one rank) or "ray" (this process drives Ray actors).
        num_workers (`int`, *optional*):
            Ray actors (default: the cluster's GPUs, else 2).
        rank (`int`, *optional*):
            This process's rank; read from the launcher's environment when not given.
        world_size (`int`, *optional*):
            The number of ranks; read from the launcher's environment when not given.
        progress (`bool`, *optional*, defaults to True):
            A progress bar on rank 0 / the Ray driver.

    Returns:
        `dict`: rank, world size, the batches this process ran, whether it resumed, the manifest path (once
        every batch is done), the folder, and "repaired": the finished images found missing or changed
        (one line each, naming the item's line), whose batches were made again.

    Raises `JobError` (a ValueError) when the folder holds another job, is in use by another run (its
    lock), or an id is too long for the file system; nothing is written then. job.json is written only
    once the model has loaded and the first batch has been generated.
    """
    if not isinstance(job, Job):
        job = load_job(job)
    if engine not in ("local", "ray"):
        raise JobError(f"Unknown engine {engine!r}; use 'local' (one process, torchrun, msrun) or 'ray'.")
    config = RunConfig(model=model, backend=backend, dtype=dtype, device=device, batch_size=batch_size,
                       threads=threads, deterministic=deterministic, allow_different_env=allow_different_env)
    if engine == "ray":
        from fewstep.batch.ray_engine import run_on_ray

        return run_on_ray(job, out, config, num_workers=num_workers, progress=progress)
    from fewstep.batch.launch import kept_determinism

    with kept_determinism(backend):  # the caller's thread count, as it was before the run pinned its own
        return _run(job, out, config, rank=rank, world_size=world_size, progress=progress)
