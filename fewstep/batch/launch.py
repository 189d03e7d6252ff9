"""Who runs which batch: the launcher a process was started by, read from its environment.

- one process: rank 0 of 1;
- torchrun and `accelerate launch`: `RANK` / `WORLD_SIZE` (no process group is needed: batches are
  assigned by rank, outputs meet in the job folder);
- msrun (MindSpore): `MS_WORKER_NUM` / `MS_ROLE`; `mindspore.communication.init()` is called here, before
  any model loads (msrun's scheduler process runs the same script and waits inside `init()`), then
  `get_rank()` / `get_group_size()`;
- Ray: the driver places batches on actors (`fewstep.batch.ray_engine`).

Also the determinism settings a runner pins: the CPU thread count (images are bitwise identical across
world sizes only with the same thread count) and, on request, torch's deterministic algorithms on CUDA.
MindSpore and torch are imported lazily here, only for the launcher or backend in use.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Tuple


def detect_world() -> Tuple[int, int]:
    """(rank, world size) of this process."""
    if "MS_WORKER_NUM" in os.environ or "MS_ROLE" in os.environ:
        from mindspore import communication  # lazily: only under msrun

        communication.init()
        return int(communication.get_rank()), int(communication.get_group_size())
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return 0, 1


def pin_determinism(backend: str, threads: int, deterministic: bool = False) -> None:
    """Pin what changes the bits between runs of one job (environment.json records the same settings)."""
    if backend == "torch":
        import torch  # lazily: the torch backend is in use

        torch.set_num_threads(int(threads))
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
    elif backend == "mindspore":
        import mindspore  # lazily: the MindSpore backend is in use

        try:
            mindspore.set_context(runtime_num_threads=int(threads))
        except (RuntimeError, ValueError, TypeError):  # a build without this context key
            pass
        if deterministic:
            mindspore.set_context(deterministic="ON")


@contextlib.contextmanager
def kept_determinism(backend: str) -> Iterator[None]:
    """Restore, when the block ends, what `pin_determinism` changes in this process: a run called from Python
    (`fewstep.batch.run`) must not leave the caller's torch on another thread count or on deterministic
    algorithms (a process started for the job, the CLI's or a rank's, ends with it anyway)."""
    if backend != "torch":  # torch's settings only are read back and restored; MindSpore's context stays as set
        yield
        return
    import torch  # lazily: the torch backend is in use

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
