"""Where a component's weights came from on disk, so a LoRA-fused weight can be restored by reading it
back instead of keeping a copy (`fuse_lora(keep_base="file")`, fewstep.pipelines.lora_bases).

`WeightFiles.scan(folder, variant)` is called when a component is loaded from a diffusers-format
folder: it reads the headers of the component's safetensors files (the ones `from_pretrained` reads:
the variant's files when one is given, else the plain ones, sharded or not) and records, for every
tensor, its file, dtype, shape and byte range, and for every file a stamp (inode, size, mtime) taken
then. `read(key)` reads the tensor's bytes (bfloat16 widened to float32, exactly, as NumPy has no
bfloat16); `unchanged(key)` says whether the file still has the stamp it had at load, so a file
rewritten after loading is never trusted without a check. Framework-free: NumPy and the standard
library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_MAX_HEADER = 100 * 2 ** 20


class TensorEntry(NamedTuple):
    path: str                # the safetensors file
    dtype: str               # its safetensors dtype ("F16", "BF16", ...)
    shape: Tuple[int, ...]
    offset: int              # absolute byte offset of the data in the file


def stamp(path: str) -> Optional[Tuple[int, int, int]]:
    """(inode, size, mtime in ns) of a file, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _header(path: str) -> Dict[str, TensorEntry]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= min(size - 8, _MAX_HEADER):
            return {}
        header = json.loads(f.read(length).decode("utf-8"))
    entries = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            continue
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(v) for v in info["data_offsets"])
        if end - begin != int(np.prod(shape)) * np.dtype(_DTYPES[info["dtype"]]).itemsize or 8 + length + end > size:
            continue
        entries[name] = TensorEntry(path, info["dtype"], shape, 8 + length + begin)
    return entries


def _chosen(name: str, variant: Optional[str]) -> bool:
    # model.safetensors, diffusion_pytorch_model-00001-of-00002.safetensors; a variant: model.fp16.safetensors
    parts = name.split(".")
    if parts[-1] != "safetensors":
        return False
    return parts[-2] == variant if variant else len(parts) == 2


class WeightFiles:
    """tensor name -> where it lies in the component's safetensors files, with each file's stamp at load."""

    def __init__(self, entries: Dict[str, TensorEntry], stamps: Dict[str, Tuple[int, int, int]]):
        self.entries = entries
        self.stamps = stamps

    @classmethod
    def scan(cls, folder: str, variant: Optional[str] = None) -> Optional["WeightFiles"]:
        """The safetensors files of a component folder, or None when it has none that can be read."""
        try:
            names = sorted(n for n in os.listdir(folder) if _chosen(n, variant))
        except OSError:
            return None
        entries: Dict[str, TensorEntry] = {}
        stamps, seen_twice = {}, set()
        for name in names:
            path = os.path.abspath(os.path.join(folder, name))
            before = stamp(path)
            try:
                found = _header(path)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if before is None or stamp(path) != before:
                continue  # changing while we read it: not a file to restore from
            stamps[path] = before
            for key, entry in found.items():
                if key in entries:
                    seen_twice.add(key)
                entries[key] = entry
        for key in seen_twice:  # a name in two files: which one loaded is not ours to guess
            del entries[key]
        return cls(entries, stamps) if entries else None

    def locate(self, key: str) -> Optional[TensorEntry]:
        return self.entries.get(key)

    def unchanged(self, key: str) -> bool:
        """True while the file holding `key` has the stamp it had when the component was loaded."""
        entry = self.entries.get(key)
        return entry is not None and stamp(entry.path) == self.stamps.get(entry.path)

    def read(self, key: str, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The tensor `key` read from its file (bfloat16 widened to float32), into a new array, or into
        `out` (returned): a writable C-contiguous array of the tensor's shape and of its file dtype, not
        bfloat16 (`fits`), such as the memory of the weight being re-fused.

        Read with one `readinto` from the page cache into writable memory, which a framework wraps
        without another copy (a memory map would need a copy to be writable, and a page fault per
        4 KiB on every read)."""
        entry = self.entries[key]
        if out is None:
            out = np.empty(entry.shape, dtype=_DTYPES[entry.dtype])
        elif not self.fits(key, out):
            raise ValueError(f"Cannot read {key!r} ({entry.dtype} {list(entry.shape)}) into a {out.dtype} array of "
                             f"shape {list(out.shape)}.")
        with open(entry.path, "rb", buffering=0) as f:
            f.seek(entry.offset)
            _fill(f, memoryview(out.reshape(-1)).cast("B"), entry.path, key)
        if entry.dtype == "BF16":
            return (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def sha256(self, key: str, dtype: np.dtype, chunk: int = 8 * 2 ** 20) -> Optional[str]:
        """sha256 of the tensor `key`'s bytes as an array of `dtype` would hold them, read a chunk at a
        time (no copy of the tensor in memory); None when the file's dtype is not `dtype` (the tensor
        must be converted first: `read` it) or the file ends early."""
        entry = self.entries[key]
        if entry.dtype == "BF16" or np.dtype(_DTYPES[entry.dtype]) != np.dtype(dtype):
            return None
        remaining = int(np.prod(entry.shape)) * np.dtype(dtype).itemsize
        digest = hashlib.sha256()
        view = memoryview(bytearray(min(chunk, max(remaining, 1))))
        with open(entry.path, "rb", buffering=0) as f:
            f.seek(entry.offset)
            while remaining:
                part = view[:min(remaining, len(view))]
                try:
                    _fill(f, part, entry.path, key)
                except OSError:
                    return None
                digest.update(part)
                remaining -= len(part)
        return digest.hexdigest()

    def fits(self, key: str, out: np.ndarray) -> bool:
        """Whether `read(key, out=out)` can read the tensor's bytes straight into `out`."""
        entry = self.entries.get(key)
        return (entry is not None and entry.dtype != "BF16" and out.dtype == _DTYPES[entry.dtype]
                and tuple(out.shape) == entry.shape and out.flags.writeable and out.flags.c_contiguous)


def _fill(f, view: memoryview, path: str, key: str) -> None:
    """Read from `f` until the byte view `view` is full (`readinto` may stop short); OSError at the end of file."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise OSError(f"{path} ends before tensor {key!r} does")
        done += n
