"""Where the base (unfused) value of a LoRA-fused weight is kept: `fuse_lora(keep_base=...)`.

- "device": the original weight tensor itself, on its device, in its dtype (one more copy of every
  touched weight in accelerator memory; restoring costs nothing).
- "host": a NumPy copy in host memory (bfloat16 kept as float32, which is exact), copied back to the
  device for every re-fusion and on restore.
- "file": nothing but a reference to the tensor in the safetensors file the component was loaded
  from (`fewstep.core.lora.weight_files`), read back (from the page cache) and converted as loading
  converted it (`ops.from_numpy(array, like=weight)`) whenever the base is needed. At the first fuse
  of a weight, the file is trusted only when it still has the stamp it had at load and its tensor,
  converted, equals the weight in memory byte for byte; otherwise (the weight was changed after
  loading, the file was rewritten, the component was not loaded from files) the weight gets a "host"
  copy. A sha256 of the weight's bytes is kept, so a file rewritten after the first fuse is caught
  before it is used (`check`), and the refresh that needs it fails with nothing written.

All values are exact: restoring gives the weight bit for bit in every mode. Framework-neutral: written
against TensorOps.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, NamedTuple

import numpy as np

from fewstep.core.lora import LoraError

MODES = ("file", "host", "device")


class FileBase(NamedTuple):
    files: Any      # the component's WeightFiles
    key: str        # the tensor's name in them
    digest: str     # sha256 of the weight's bytes (as ops.to_numpy gives them) at the first fuse


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise LoraError(f"keep_base must be one of {list(MODES)}; got {mode!r}.")
    return mode


def _digest(array: np.ndarray) -> str:
    # hashed through a byte view: no copy of the weight is made
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def keep(ops, mode: str, component, path: str, weight):
    """What to keep of `weight` (the base of module `path` of `component`) in `mode`."""
    if mode == "device":
        return weight
    current = ops.to_numpy(weight)  # on a CPU device, the weight's own memory
    if mode == "file":
        files = getattr(component, "weight_files", None)
        key = f"{path}.weight"
        if files is not None and files.locate(key) is not None and files.unchanged(key):
            try:
                from_file = ops.to_numpy(ops.from_numpy(files.read(key), like=weight))
            except (OSError, ValueError, TypeError):
                from_file = None
            if from_file is not None and from_file.dtype == current.dtype and from_file.shape == current.shape:
                digest = _digest(current)
                if _digest(from_file) == digest:
                    return FileBase(files, key, digest)
    return np.array(current, copy=True)  # "host", or a weight its file cannot give back exactly


def _file_intact(ops, base: FileBase, like) -> bool:
    if base.files.unchanged(base.key):
        return True
    try:  # the file changed since loading: trusted only if this tensor still gives the same bytes
        return _digest(ops.to_numpy(ops.from_numpy(base.files.read(base.key), like=like))) == base.digest
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


def materialize(ops, saved, like):
    """The base as a tensor like `like` (its dtype and device)."""
    if isinstance(saved, FileBase):
        return ops.from_numpy(saved.files.read(saved.key), like=like)
    if isinstance(saved, np.ndarray):
        return ops.from_numpy(saved, like=like)
    return saved


def kind(saved) -> str:
    """Where a kept base lives: "file", "host" or "device"."""
    if isinstance(saved, FileBase):
        return "file"
    return "host" if isinstance(saved, np.ndarray) else "device"
