"""The job folder: outputs written so that a crash costs only the unfinished batch.

    OUT/job.json            which job and batch plan this folder holds (another job is refused)
    OUT/environment.json    where it ran (versions, backend, device, dtype, threads): resume checks it
    OUT/images/<id>.png     one image per item
    OUT/done/batch-<u>.json a batch's done-record (ids, files, sha256, seeds, settings, seconds), written last
    OUT/logs/rank-<r>.log   per-rank log lines
    OUT/manifest.jsonl      every item in job order, merged once all batches are done

Every file is written under a temporary name in its own folder and renamed into place (`os.replace` is
atomic on one file system), so a reader sees a whole file or none. A batch counts as done only when its
record exists; images of a batch without one are rewritten on resume, and leftover temporary files are
removed once the job is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any, Dict, Iterable, List, Optional

from fewstep.batch.job import Item, Job, JobError

TEMP_MARK = ".fewstep-tmp-"


def atomic_write(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_MARK}{uuid.uuid4().hex}-{name}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def write_json(path: str, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class JobFolder:
    def __init__(self, out: str):
        self.out = os.path.abspath(os.fspath(out))

    # paths
    def image_path(self, item_id: str) -> str:
        return os.path.join(self.out, "images", f"{item_id}.png")

    def record_path(self, batch: int) -> str:
        return os.path.join(self.out, "done", f"batch-{batch:05d}.json")

    def log_path(self, rank: int) -> str:
        return os.path.join(self.out, "logs", f"rank-{rank}.log")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.out, "manifest.jsonl")

    # identity
    def claim(self, job: Job, batches: List[List[Item]], identity: Dict[str, Any],
              environment: Dict[str, Any], allow_different_env: bool) -> bool:
        """Make the folder this job's, or check that it already is. Returns True when resuming.

        Raises JobError, before anything is written, when the folder holds another job (other items or
        another batch plan) or was run in another environment (unless `allow_different_env`)."""
        plan = [[item.id for item in batch] for batch in batches]
        wanted = {"job": job.digest, "source": os.path.abspath(job.source), "batches": plan, **identity}
        job_file = os.path.join(self.out, "job.json")
        env_file = os.path.join(self.out, "environment.json")
        if os.path.exists(job_file):
            held = read_json(job_file)
            if held.get("job") != wanted["job"] or held.get("batches") != plan:
                what = "other items" if held.get("job") != wanted["job"] else "another batch plan (batch size)"
                raise JobError(f"{self.out} holds another job's records ({what}, from {held.get('source')}); "
                               f"use a new --out folder, or rerun with that job and batch size to resume it.")
            for key in identity:
                if held.get(key) != identity[key]:
                    raise JobError(f"{self.out} was run with {key}={held.get(key)!r}, not {identity[key]!r}; "
                                   f"resume with the same {key} or use a new --out folder.")
            if os.path.exists(env_file):
                differences = _differences(read_json(env_file), environment)
                if differences and not allow_different_env:
                    raise JobError(f"{self.out} was started in another environment ({'; '.join(differences)}); "
                                   f"images made now could differ in their last bits. Pass "
                                   f"--allow-different-env (allow_different_env=True) to resume anyway.")
            return True
        elif os.path.isdir(os.path.join(self.out, "done")) and os.listdir(os.path.join(self.out, "done")):
            raise JobError(f"{self.out} holds batch records but no job.json: not a folder this job can resume; "
                           f"use a new --out folder.")
        write_json(job_file, wanted)
        write_json(env_file, environment)
        return False

    # progress
    def is_done(self, batch: int) -> bool:
        return os.path.exists(self.record_path(batch))

    def done_batches(self, count: int) -> List[int]:
        return [u for u in range(count) if self.is_done(u)]

    def write_record(self, batch: int, record: Dict[str, Any]) -> None:
        write_json(self.record_path(batch), record)

    def log(self, rank: int, line: str) -> None:
        os.makedirs(os.path.dirname(self.log_path(rank)), exist_ok=True)
        with open(self.log_path(rank), "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    # completion
    def finish(self, job: Job, count: int) -> Optional[str]:
        """Once every batch has its record: merge the manifest (job order, no timings, so two runs of one
        job write the same file) and remove leftover temporary files. Returns the manifest's path, or None
        while batches are missing."""
        if len(self.done_batches(count)) != count:
            return None
        entries = {}
        for u in range(count):
            for entry in read_json(self.record_path(u))["items"]:
                entries[entry["id"]] = entry
        lines = [json.dumps({k: v for k, v in entries[item.id].items() if k != "seconds"}, sort_keys=True)
                 for item in job.items]
        atomic_write(self.manifest_path, ("\n".join(lines) + "\n").encode("utf-8"))
        for path in self.temporary_files():
            try:
                os.remove(path)
            except FileNotFoundError:  # another rank finishing at the same moment removed it
                pass
        return self.manifest_path

    def temporary_files(self) -> Iterable[str]:
        for root, _, files in os.walk(self.out):
            for name in files:
                if name.startswith(TEMP_MARK):
                    yield os.path.join(root, name)


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
