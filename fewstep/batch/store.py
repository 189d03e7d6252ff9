"""The job folder: outputs written so that a crash costs only the unfinished batch.

    OUT/job.json            which job and batch plan this folder holds (another job is refused)
    OUT/environment.json    where it ran (versions, backend, device, dtype, threads): resume checks it
    OUT/images/<id>.png     one image per item
    OUT/done/batch-<u>.json a batch's done-record (ids, files, sha256, seeds, settings, seconds), written last
    OUT/logs/rank-<r>.log   per-rank log lines
    OUT/manifest.jsonl      every item in job order, merged once all batches are done
    OUT/.lock               locked (fcntl.flock) by the run using the folder, and holding its pid: a second
                            run on the folder stops at once, naming it (ranks of one torchrun / msrun run
                            share it, each also locking OUT/.lock-rank-<r>)

Every file is written by `fewstep.core.files`: under an unpredictable temporary name (`.fewstep-tmp-...`, a
prefix no item id may start with) in its own folder, synced and renamed into place (`os.replace` is atomic on
one file system), so a reader sees a whole file or none and a link at the target is replaced, never written
through. A batch counts as done only when its record exists; images of a batch without one are rewritten on
resume. Every run first checks the finished batches' images against their records (sha256): a batch with an
image missing or changed loses its record and runs again, and the run says so. job.json and environment.json
are written only once the model has loaded and the first batch has run, so a start that fails leaves a folder
the corrected command accepts. Temporary files left by a crash are removed once the job is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional

from fewstep.batch.job import Item, Job, JobError
from fewstep.core import files
from fewstep.core.files import TEMP_PREFIX

TEMP_MARK = TEMP_PREFIX   # the older name
LOCK_NAME = ".lock"
_NAME_MAX = 255           # where the file system cannot say (os.pathconf fails): the common limit


def atomic_write(path: str, data: bytes) -> None:
    files.write_bytes(path, data)


def write_json(path: str, value: Any) -> None:
    # strict JSON: a NaN or infinity raises here rather than reaching a record as a bare `NaN`
    files.write_json(path, value, indent=2, sort_keys=True)


def read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class JobFolder:
    def __init__(self, out: str):
        self.out = os.path.abspath(os.fspath(out))
        self._logs: Dict[int, str] = {}   # rank -> its log's text, read once

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
    def check(self, job: Job, batches: List[List[Item]], identity: Dict[str, Any],
              environment: Dict[str, Any], allow_different_env: bool) -> bool:
        """Whether the folder already holds this job (True: a resume), writing nothing. Raises JobError when
        it holds another job (other items or another batch plan), was run with another model or batch size,
        or in another environment (unless `allow_different_env`)."""
        plan = [[item.id for item in batch] for batch in batches]
        job_file = os.path.join(self.out, "job.json")
        env_file = os.path.join(self.out, "environment.json")
        if os.path.exists(job_file):
            held = _read_record(job_file)
            if held.get("job") != job.digest or held.get("batches") != plan:
                what = "other items" if held.get("job") != job.digest else "another batch plan (batch size)"
                raise JobError(f"{self.out} holds another job's records ({what}, from {held.get('source')}); "
                               f"use a new --out folder, or rerun with that job and batch size to resume it.")
            for key in identity:
                if held.get(key) != identity[key]:
                    raise JobError(f"{self.out} was run with {key}={held.get(key)!r}, not {identity[key]!r}; "
                                   f"resume with the same {key} or use a new --out folder.")
            if os.path.exists(env_file):
                differences = _differences(_read_record(env_file), environment)
                if differences and not allow_different_env:
                    raise JobError(f"{self.out} was started in another environment ({'; '.join(differences)}); "
                                   f"images made now could differ in their last bits. Pass "
                                   f"--allow-different-env (allow_different_env=True) to resume anyway.")
            return True
        if os.path.isdir(os.path.join(self.out, "done")) and os.listdir(os.path.join(self.out, "done")):
            raise JobError(f"{self.out} holds batch records but no job.json: not a folder this job can resume; "
                           f"use a new --out folder.")
        return False

    def claim(self, job: Job, batches: List[List[Item]], identity: Dict[str, Any],
              environment: Dict[str, Any], allow_different_env: bool) -> bool:
        """Make the folder this job's, or check that it already is (`check`). Returns True when resuming.
        Called once the model has loaded and the first batch has run, so that a start that fails (a typo in
        the model, a thread count of 0) leaves no job.json that would refuse the corrected command."""
        if self.check(job, batches, identity, environment, allow_different_env):
            return True
        plan = [[item.id for item in batch] for batch in batches]
        # environment.json first: a folder with job.json always has both
        write_json(os.path.join(self.out, "environment.json"), environment)
        write_json(os.path.join(self.out, "job.json"),
                   {"job": job.digest, "source": os.path.abspath(job.source), "batches": plan, **identity})
        return False

    def check_names(self, job: Job) -> None:
        """Every image name fits the file system (its NAME_MAX, usually 255 bytes), checked before any work:
        else the first image of a 220-character id fails after its batch has been generated."""
        probe = os.path.join(self.out, "images")
        while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        try:
            limit = int(os.pathconf(probe, "PC_NAME_MAX"))
        except (OSError, ValueError):
            limit = _NAME_MAX
        for item in job.items:
            size = len(os.fsencode(os.path.basename(self.image_path(item.id))))
            if size > limit:
                shown = item.id if len(item.id) <= 40 else item.id[:40] + "..."
                raise JobError(f"{job.source}, line {item.line}: the id {shown!r} makes an image name of {size} bytes, "
                               f"more than the {limit} the file system allows in {probe}; use a shorter id.")

    @contextlib.contextmanager
    def locked(self, rank: int = 0, world_size: int = 1) -> Iterator[None]:
        """Hold the folder for this run: an exclusive `fcntl.flock` on OUT/.lock, with this process's pid in
        it (the ranks of one torchrun / msrun run share OUT/.lock and each hold OUT/.lock-rank-<r>). A second
        run gets a JobError naming the pid that holds it, at once. The lock goes with the process, even
        when it is killed; the file stays (removing it would let a third run lock a new file beside a
        second one still waiting on the old)."""
        os.makedirs(self.out, exist_ok=True)
        handles = []
        try:
            shared = world_size > 1
            handles.append(self._lock(LOCK_NAME, shared, write_pid=rank == 0))
            if shared:
                handles.append(self._lock(f"{LOCK_NAME}-rank-{rank}", False, write_pid=True))
            yield
        finally:
            for handle in reversed(handles):
                os.close(handle)  # releases the lock

    def _lock(self, name: str, shared: bool, write_pid: bool) -> int:
        import fcntl  # lazily: POSIX only

        path = os.path.join(self.out, name)
        try:
            # O_NOFOLLOW: a link planted at the lock's name is refused, not followed
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise JobError(f"{path} is a symbolic link; remove it (fewstep keeps its lock file there).") from None
            raise
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode("ascii", "replace").strip()
            os.close(handle)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise JobError(f"{self.out} is in use: {who} is running a batch job there (it holds {path}); wait for "
                           f"it to finish, or use another --out folder.") from None
        except BaseException:
            os.close(handle)
            raise
        if write_pid:
            # the lock file itself is never replaced (the lock is on its inode), so it is written in place
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()}\n".encode("ascii"), 0)
        return handle

    # checking finished batches
    def verify(self, job: Job, batches: List[List[Item]], indices: Iterable[int]) -> List[str]:
        """Check the images of the finished batches among `indices` against their done-records (sha256).
        A batch whose record cannot be read, or with an image missing or changed, loses its record (so it
        runs again, like any unfinished batch). Returns what was found, one line per image, naming the
        item's line. An image path taken by something that is not a file (a folder) raises JobError."""
        notes = []
        for u in indices:
            record_path = self.record_path(u)
            if not os.path.exists(record_path):
                continue
            problems = self._problems(job, batches[u], record_path)
            if problems:
                notes += [f"{line}; making batch {u} again" for line in problems]
                os.remove(record_path)
        return notes

    def _problems(self, job: Job, batch: List[Item], record_path: str) -> List[str]:
        try:
            record = read_json(record_path)
            recorded = {entry["id"]: entry["sha256"] for entry in record["items"]}
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{record_path} is not a readable done-record"]
        problems = []
        for item in batch:
            path = self.image_path(item.id)
            where = f"{job.source}, line {item.line}: {os.path.relpath(path, self.out)}"
            if os.path.isdir(path) and not os.path.islink(path):
                raise JobError(f"{where} is a folder, not the item's image; move it away and run again.")
            if item.id not in recorded:
                problems.append(f"{where} is not in its batch's done-record")
            elif not os.path.lexists(path):
                problems.append(f"{where} is missing")
            elif os.path.islink(path) or not os.path.isfile(path) or file_sha256(path) != recorded[item.id]:
                problems.append(f"{where} has changed since it was made (its sha256 differs from the record)")
        return problems

    # progress
    def is_done(self, batch: int) -> bool:
        return os.path.exists(self.record_path(batch))

    def done_batches(self, count: int) -> List[int]:
        return [u for u in range(count) if self.is_done(u)]

    def write_record(self, batch: int, record: Dict[str, Any]) -> None:
        write_json(self.record_path(batch), record)

    def log(self, rank: int, line: str) -> None:
        """Add a line to the rank's log; the whole log is rewritten through `fewstep.core.files` (a log is
        a few lines per batch, and so it is never written through a link either)."""
        path = self.log_path(rank)
        if rank not in self._logs:
            try:
                with open(path, "r", encoding="utf-8", errors="replace") as f:
                    self._logs[rank] = f.read()
            except FileNotFoundError:
                self._logs[rank] = ""
        self._logs[rank] += line.rstrip("\n") + "\n"
        files.write_text(path, self._logs[rank])

    # completion
    def finish(self, job: Job, count: int, started: Optional[float] = None) -> Optional[str]:
        """Once every batch has its record: merge the manifest (job order, no timings, so two runs of one
        job write the same file; not rewritten when it already says so) and remove the temporary files a
        crash left (those older than `started`, this run's start: a newer one is another rank's, being
        written). Returns the manifest's path, or None while batches are missing."""
        if len(self.done_batches(count)) != count:
            return None
        entries = {}
        for u in range(count):
            for entry in read_json(self.record_path(u))["items"]:
                entries[entry["id"]] = entry
        lines = [json.dumps({k: v for k, v in entries[item.id].items() if k != "seconds"}, sort_keys=True,
                            allow_nan=False) for item in job.items]
        text = "\n".join(lines) + "\n"
        if _read_text(self.manifest_path) != text:
            files.write_text(self.manifest_path, text)
        images = {os.path.basename(self.image_path(item.id)) for item in job.items}
        for path in self.temporary_files(started):
            if os.path.basename(path) in images:  # never an item's image (ids cannot take the prefix anyway)
                continue
            try:
                os.remove(path)
            except FileNotFoundError:  # another rank finishing at the same moment removed it
                pass
        return self.manifest_path

    def temporary_files(self, older_than: Optional[float] = None) -> Iterable[str]:
        """Files named with the temporary prefix in the folder and its images/, done/ and logs/ folders."""
        for folder in (self.out, *(os.path.join(self.out, sub) for sub in ("images", "done", "logs"))):
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                path = os.path.join(folder, name)
                if not name.startswith(TEMP_PREFIX) or not os.path.isfile(path) or os.path.islink(path):
                    continue
                if older_than is None or os.lstat(path).st_mtime < older_than:
                    yield path


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _read_record(path: str) -> Dict[str, Any]:
    try:
        value = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise JobError(f"{path} is not valid JSON ({err}); it is not a folder fewstep can resume: use a new --out "
                       f"folder.") from None
    if not isinstance(value, dict):
        raise JobError(f"{path} is not a fewstep record; use a new --out folder.")
    return value


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
