"""Cutting a job into batches, once, when it starts.

The batch is the unit of work, scheduling and resume. Items are taken in job order and cut every
`batch_size` items, and also where the settings change (one pipeline call takes one set of steps,
guidance, size, scheduler and LoRAs), so the cut depends only on the job and the batch size. Ranks
then change only *who* runs a batch (batch u on rank u mod world size), never which items share a
call: how items are grouped changes the float bits, who runs them does not.
"""

from __future__ import annotations

from typing import List

from fewstep.batch.job import Item, Job, JobError


def plan_batches(job: Job, batch_size: int) -> List[List[Item]]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise JobError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batches: List[List[Item]] = []
    for item in job.items:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and last[0].settings == item.settings:
            last.append(item)
        else:
            batches.append([item])
    return batches


def batches_for_rank(count: int, rank: int, world_size: int) -> List[int]:
    """The batch indices rank `rank` of `world_size` runs: u with u mod world_size == rank."""
    if not 0 <= rank < world_size:
        raise JobError(f"rank {rank} is outside a world of {world_size}.")
    return list(range(rank, count, world_size))
