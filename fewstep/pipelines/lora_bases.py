"""Where the base (unfused) value of a LoRA-fused weight is kept: `fuse_lora(keep_base=...)`.

- "device": the original weight tensor itself, on its device, in its dtype (one more copy of every
  touched weight in accelerator memory; restoring costs nothing).
- "host": a NumPy copy in host memory (bfloat16 kept as float32, which is exact; page-locked for a
  CUDA weight, `ops.host_buffer`), copied back to the device for every re-fusion and on restore.
- "file": nothing but a reference to the tensor in the safetensors file the component was loaded
  from (`fewstep.core.lora.weight_files`), read back (from the page cache) and converted as loading
  converted it (`ops.from_numpy(array, like=weight)`) whenever the base is needed, straight into the
  weight's memory where it can (`materialize(into=)`). At the first fuse
  of a weight, the file is trusted only when it still has the stamp it had at load and its tensor,
  converted, equals the weight in memory byte for byte; otherwise (the weight was changed after
  loading, the file was rewritten, the component was not loaded from files) the weight gets a "host"
  copy. A sha256 of the weight's bytes is kept, so a file rewritten after the first fuse is caught
  before it is used (`check`), and the refresh that needs it fails with nothing written.

All values are exact: restoring gives the weight bit for bit in every mode. Framework-neutral: written
against TensorOps.

When the pipeline moves (`pipe.to(device, dtype)`, `moved`), a "device" base is moved and cast as the
weight was; a "host" or "file" base stays where it is and records the dtype: its `dtypes` are the casts
the weight went through since it was kept (the first: the dtype it was kept in), replayed on the device
whenever the base is needed, so the base is what casting the weight itself through the same moves gave
(float32 -> float16 -> float32 holds float16 values, as the moved weight does) at no cost at move time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from typing import Any, Iterable, NamedTuple, Tuple

import numpy as np

from fewstep.core.lora import LoraError

MODES = ("file", "host", "device")


class FileBase(NamedTuple):
    files: Any      # the component's WeightFiles
    key: str        # the tensor's name in them
    digest: str     # sha256 of the weight's bytes (as ops.to_numpy gives them) at the first fuse
    dtypes: Tuple[str, ...]  # the dtype the file's tensor is converted to (the digest's), then later casts


class HostBase(NamedTuple):
    array: np.ndarray        # the weight's values in host memory (bfloat16 as float32, exactly)
    dtypes: Tuple[str, ...]  # the dtype it was kept from, then the casts of later moves


# (narrow, wide): narrow -> wide -> narrow gives every value back, so such a round trip is dropped
# from a base's casts (a pipeline moved back and forth keeps a short list)
_EXACT_WIDENING = {("float16", "float32"), ("bfloat16", "float32"), ("float16", "float64"),
                   ("bfloat16", "float64"), ("float32", "float64")}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise LoraError(f"keep_base must be one of {list(MODES)}; got {mode!r}.")
    return mode


_HASHER = []


def _hasher() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread, made on first use, that hashes beside the caller."""
    if not _HASHER:
        _HASHER.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fewstep-lora-hash"))
    return _HASHER[0]


def _digest(array: np.ndarray) -> str:
    # hashed through a byte view: no copy of the weight is made
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def keep(ops, mode: str, component, path: str, weight):
    """What to keep of `weight` (the base of module `path` of `component`) in `mode`."""
    if mode == "device":
        return weight
    dtypes = (ops.dtype_name(weight),)
    current = ops.to_numpy(weight)  # on a CPU device, the weight's own memory
    if mode == "file":
        files = getattr(component, "weight_files", None)
        key = component.weight_file_key(path)
        if files is not None and files.locate(key) is not None and files.unchanged(key):
            # the two hashes side by side: hashlib lets go of the GIL, and they are most of a first fusion's
            # cost in this mode (a float32 SD 1.5 UNet: 2 x 3.4 GB)
            pending = _hasher().submit(_digest, current)
            file_digest = _file_digest(ops, files, key, weight, current)
            digest = pending.result()
            if file_digest == digest:
                return FileBase(files, key, digest, dtypes)
    # "host", or a weight its file cannot give back exactly: pinned memory for a CUDA weight (ops.host_buffer)
    copy = ops.host_buffer(current.shape, dtypes[0], like=weight)
    np.copyto(copy, current)
    return HostBase(copy, dtypes)


def _file_digest(ops, files, key: str, weight, current: np.ndarray):
    """sha256 of the file's tensor `key` converted as loading converted it (like `weight`, whose host
    values are `current`), or None when it cannot be read so. Where loading kept the file's dtype, the
    bytes are hashed as they are read, a chunk at a time: no second copy of the weight in memory at the
    first fusion, which writes into the weight itself."""
    if files.locate(key).shape != current.shape:
        return None
    try:
        if ops.dtype_name(weight) != "bfloat16":
            hashed = files.sha256(key, current.dtype)
            if hashed is not None:
                return hashed
        from_file = ops.to_numpy(ops.from_numpy(files.read(key), like=weight))
    except (OSError, ValueError, TypeError):
        return None
    if from_file.dtype != current.dtype or from_file.shape != current.shape:
        return None
    return _digest(from_file)


def _file_intact(ops, base: FileBase, like) -> bool:
    if base.files.unchanged(base.key):
        return True
    try:  # the file changed since loading: trusted only if this tensor still gives the same bytes
        converted = ops.from_numpy(base.files.read(base.key), like=like, dtype=base.dtypes[0])
        return _digest(ops.to_numpy(converted)) == base.digest
    except (OSError, ValueError, TypeError, KeyError):
        return False


def check(ops, items: Iterable) -> None:
    """Raise LoraError, before anything is written, when a file-kept base among `items`
    ((key, saved value, a tensor like the weight)) can no longer be read back exactly."""
    for key, saved, like in items:
        if isinstance(saved, FileBase) and not _file_intact(ops, saved, like):
            component, path = key
            raise LoraError(
                f"The base weight of {component} module {path!r} was kept as a reference to "
                f"{saved.files.locate(saved.key).path} (fuse_lora(keep_base='file')), and that file has changed "
                f"since: the weight cannot be restored from it. No weight was changed. Put the file back, or reload "
                f"the pipeline; use keep_base='host' or 'device' when the files may change while LoRAs are fused.")


def materialize(ops, saved, like, into=None):
    """The base as a tensor like `like` (its dtype and device): a host or file base converted to the
    dtype it was kept in, then cast through the dtypes of the moves since, on `like`'s device.

    `into`: a tensor like `like` that the caller owns and may have overwritten (the weight being
    re-fused or restored). A file base with no casts since is read straight into its memory where
    the backend gives a host view of it (`ops.host_view`: torch on the CPU), and `into` is returned:
    no new memory, one copy out of the page cache. Otherwise a new tensor, as without `into`."""
    if isinstance(saved, FileBase) and into is not None and saved.dtypes == (ops.dtype_name(into),):
        view = ops.host_view(into)
        if view is not None and saved.files.fits(saved.key, view):
            saved.files.read(saved.key, out=view)
            return into
    if isinstance(saved, (FileBase, HostBase)):
        array = saved.files.read(saved.key) if isinstance(saved, FileBase) else saved.array
        tensor = ops.from_numpy(array, like=like, dtype=saved.dtypes[0])
        for dtype in (*saved.dtypes[1:], ops.dtype_name(like)):
            tensor = ops.cast(tensor, dtype)
        return tensor
    return saved


def moved(ops, saved, component, like):
    """The kept base after its weight was moved to `like`'s device and dtype (by `pipe.to`): a "device"
    base moved and cast as the weight was (`component.place`); a host or file base stays put and records
    the cast."""
    dtype = ops.dtype_name(like)
    if isinstance(saved, (FileBase, HostBase)):
        dtypes = saved.dtypes
        if dtypes[-1] == dtype:
            return saved
        if len(dtypes) > 1 and dtypes[-2] == dtype and (dtype, dtypes[-1]) in _EXACT_WIDENING:
            return saved._replace(dtypes=dtypes[:-1])  # back from an exact widening: the round trip is nothing
        return saved._replace(dtypes=dtypes + (dtype,))
    return component.place(saved, like, dtype)


def kind(saved) -> str:
    """Where a kept base lives: "file", "host" or "device"."""
    if isinstance(saved, FileBase):
        return "file"
    return "host" if isinstance(saved, HostBase) else "device"
