"""What the torch and MindSpore backends share, written once. Framework-free: a backend hands in its
framework module; nothing here imports one.

`mindspore.mint` follows torch's API (`reshape`, `permute`, `cat`, `split` by part size, `dim=`), so
the TensorOps members that only move or relabel data are the same code on both, with the namespace
(`xp`) as the one difference. What differs for real (device placement, casts, CPU stand-ins) stays in
each backend.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np

from fewstep.core.ops import DTYPES, check_dtype


def as_ints(values: Iterable) -> Tuple[int, ...]:
    """A shape, axes or sizes as a tuple of Python ints (frameworks refuse NumPy integers in places)."""
    return tuple(int(v) for v in values)


def equal_parts(length: int, sections: int, axis: int) -> int:
    """The part size that splits an axis of `length` into `sections` equal parts, or a ValueError."""
    if sections <= 0 or length % sections:
        raise ValueError(
            f"Cannot split an axis of length {length} (axis {axis}) into {sections} equal parts; pass a "
            f"list of part sizes instead."
        )
    return length // sections


def host_array(a) -> np.ndarray:
    """`a` as an array a framework may wrap without copying (torch.from_numpy and
    mindspore.Tensor.from_numpy share its memory).

    A writable C-contiguous native-order array is returned as is. A read-only array (the framework
    would let writes through it), a strided view (negative strides are refused) or a non-native byte
    order is copied first, so the tensor never aliases memory it must not write or reads it oddly."""
    a = np.asarray(a)
    if not (a.flags.writeable and a.flags.c_contiguous and a.dtype.isnative):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    return a


def host_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype a host copy of a `dtype` tensor is kept in: bfloat16, which NumPy lacks, as
    float32 (exact); every other dtype as itself."""
    return np.dtype(np.float32 if check_dtype(dtype) == "bfloat16" else check_dtype(dtype))


class DtypeTable:
    """fewstep's dtype names (`fewstep.core.ops.DTYPES`) <-> one framework's dtype objects."""

    def __init__(self, framework, spelling: Optional[dict] = None):
        # spelling: where the framework names a dtype otherwise (MindSpore: bool -> bool_)
        spelling = spelling or {}
        self._native = {name: getattr(framework, spelling.get(name, name)) for name in DTYPES}
        self._names = {native: name for name, native in self._native.items()}

    def native(self, dtype: str):
        """The framework's dtype for a fewstep dtype name (or an alias such as "fp16" / "torch.float16")."""
        return self._native[check_dtype(dtype)]

    def name(self, native) -> str:
        """The fewstep name of a framework dtype; a ValueError naming the supported ones for another."""
        try:
            return self._names[native]
        except KeyError:
            return check_dtype(str(native).lower())


class TorchLikeOps:
    """The TensorOps members torch and `mindspore.mint` spell alike.

    A subclass sets `name`, `xp` (torch or mindspore.mint), `tensor_type` and `dtypes` (a DtypeTable),
    and says how a host array becomes a tensor (`_wrap`, sharing memory), how a tensor changes dtype
    (`_astype`) and where `from_numpy` puts its result (`_place`)."""

    name: str
    xp: Any
    tensor_type: type
    dtypes: DtypeTable

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, self.tensor_type)

    def from_numpy(self, a, like=None, dtype: Optional[str] = None):
        t = self._wrap(host_array(a))
        if dtype is None and like is not None:
            target = like.dtype
        else:
            target = self.dtypes.native(dtype) if dtype is not None else t.dtype
        return self._place(t, like, target)

    def dtype_name(self, x) -> str:
        return self.dtypes.name(x.dtype)

    def shape(self, x):
        return as_ints(x.shape)

    def cast(self, x, dtype: str):
        target = self.dtypes.native(dtype)
        return x if x.dtype == target else self._astype(x, target)

    def reshape(self, x, shape: Sequence[int]):
        return self.xp.reshape(x, as_ints(shape))

    def permute_dims(self, x, axes: Sequence[int]):
        return self.xp.permute(x, as_ints(axes))

    def concat(self, xs, axis: int = 0):
        return self.xp.cat(list(xs), dim=axis)

    def split(self, x, sections, axis: int = 0):
        if isinstance(sections, (int, np.integer)):
            # xp.split(x, int) takes a part *size*; the protocol's int is a *number* of parts.
            size = equal_parts(int(x.shape[axis]), int(sections), axis)
            return list(self.xp.split(x, size, dim=axis))
        return list(self.xp.split(x, [int(s) for s in sections], dim=axis))

    # what each framework does its own way
    def _wrap(self, a: np.ndarray):
        raise NotImplementedError

    def _astype(self, x, native_dtype):
        raise NotImplementedError

    def _place(self, t, like, native_dtype):
        raise NotImplementedError
