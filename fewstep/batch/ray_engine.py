"""Running a job on Ray: the driver places the batches that have no done-record on actors that each hold
one pipeline (`BatchWorker`), through Ray's own `ActorPool`; outputs go to the job folder, which must be
storage every node sees. An actor asks for one GPU on NVIDIA clusters and the `NPU` resource on Ascend
ones, else one CPU. Ray is imported lazily, only here (`pip install 'fewstep[ray]'`).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from fewstep.batch.job import Job, JobError
from fewstep.batch.plan import plan_batches
from fewstep.batch.runner import BatchWorker, RunConfig, job_environment, with_default
from fewstep.batch.store import JobFolder


def _ray():
    try:
        import ray
    except ImportError as err:
        raise JobError("--engine ray needs Ray: pip install 'fewstep[ray]' -c constraints.txt") from err
    return ray


def _actor_resources(ray) -> Dict[str, Any]:
    cluster = ray.cluster_resources()
    if cluster.get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    if cluster.get("NPU", 0) >= 1:
        return {"resources": {"NPU": 1}}
    return {"num_cpus": 1}


def run_on_ray(job: Job, out: str, config: RunConfig, num_workers: Optional[int] = None,
               progress: bool = True) -> Dict[str, Any]:
    ray = _ray()
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init()  # a local cluster, or the one RAY_ADDRESS names
    resources = _actor_resources(ray)
    if num_workers is None:
        cluster = ray.cluster_resources()
        num_workers = int(cluster.get("GPU", 0) or cluster.get("NPU", 0) or 2)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise JobError(f"num_workers must be a positive integer, got {num_workers!r} (--num-workers).")
    started = time.time()
    config.check()
    config = with_default(job, config)
    batches = plan_batches(job, config.batch_size)
    folder = JobFolder(out)
    folder.check_names(job)
    claim = (job, batches, config.identity(), job_environment(config), config.allow_different_env)
    folder.check(*claim)   # another job's folder is refused before any actor loads a model
    actor = ray.remote(BatchWorker).options(**resources)
    workers = [actor.remote(job, out, config, rank) for rank in range(num_workers)]
    try:
        ray.get([worker.ready.remote() for worker in workers])  # every actor has its model: now the folder is the job's
        with folder.locked():
            return _drive(ActorPool(workers), job, folder, batches, claim, started, num_workers, progress)
    finally:
        for worker in workers:
            ray.kill(worker)


def _drive(pool, job: Job, folder: JobFolder, batches, claim, started: float, num_workers: int,
           progress: bool) -> Dict[str, Any]:
    """Under the folder's lock: check the finished batches, claim the folder, run the rest on the actors."""
    existed = folder.claim(*claim)
    repaired = folder.verify(job, batches, range(len(batches)))
    pending = [u for u in range(len(batches)) if not folder.is_done(u)]
    resumed = existed and len(pending) < len(batches)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(job.items), initial=len(job.items) - sum(len(batches[u]) for u in pending), unit="img",
                   desc="fewstep batch (ray)", dynamic_ncols=True)
    try:
        for record in pool.map_unordered(lambda w, u: w.run_batch.remote(u), pending):
            if bar is not None:
                bar.update(len(record["ids"]))
    finally:
        if bar is not None:
            bar.close()
    manifest = folder.finish(job, len(batches), started)
    return {"rank": 0, "world_size": num_workers, "batches_run": pending, "resumed": resumed, "manifest": manifest,
            "folder": folder.out, "repaired": repaired}
