"""The NumPy backend: the reference implementation of TensorOps and the oracle in the contract tests."""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import numpy as np

from fewstep.core.ops import check_dtype


def _np_dtype(dtype: str):
    dtype = check_dtype(dtype)
    if dtype == "bfloat16":
        raise TypeError("NumPy has no bfloat16; use the torch or mindspore backend for bfloat16 tensors.")
    return np.dtype(dtype)


def _source_index(out_size: int, in_size: int):
    """Bilinear source coordinates as torch computes them for align_corners=False."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


class Backend:
    name = "numpy"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def from_numpy(self, a, like=None, dtype: Optional[str] = None):
        a = np.asarray(a)
        if dtype is None and like is not None:
            dtype = self.dtype_name(like)
        return a.astype(_np_dtype(dtype), copy=False) if dtype is not None else a

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def dtype_name(self, x) -> str:
        return check_dtype(np.asarray(x).dtype.name)

    def shape(self, x):
        return tuple(int(d) for d in np.shape(x))

    def cast(self, x, dtype: str):
        return x.astype(_np_dtype(dtype), copy=False)

    def reshape(self, x, shape: Sequence[int]):
        return np.reshape(x, tuple(shape))

    def permute_dims(self, x, axes: Sequence[int]):
        return np.transpose(x, tuple(axes))

    def concat(self, xs, axis: int = 0):
        return np.concatenate(list(xs), axis=axis)

    def split(self, x, sections, axis: int = 0):
        if isinstance(sections, int):
            return np.split(x, sections, axis=axis)
        return np.split(x, np.cumsum(list(sections))[:-1], axis=axis)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def clip(self, x, lo, hi):
        # np.clip with one None bound is the one-sided clip (it refuses two); the dtype stays x's.
        if lo is None and hi is None:
            return x.copy()
        return np.clip(x, lo, hi).astype(x.dtype, copy=False)

    def matmul(self, a, b):
        return np.matmul(a, b)

    def matmul_add(self, x, a, b, scale: float = 1.0, out=None):
        product = np.matmul(a, b)
        if scale != 1.0:
            product *= scale  # a Python float keeps the array's dtype
        return np.add(x, product, out=out)

    def copy_into(self, out, x):
        np.copyto(out, x, casting="unsafe")  # a float cast: astype's rounding
        return out

    def host_view(self, x):
        return x if isinstance(x, np.ndarray) and x.flags.writeable and x.flags.c_contiguous else None

    def host_buffer(self, shape, dtype: str, like=None):
        return np.empty(tuple(int(s) for s in shape), dtype=_np_dtype(dtype))

    def all_finite(self, x) -> bool:
        return bool(np.isfinite(x).all())

    def std(self, x, axes):
        return np.std(x, axis=tuple(int(a) for a in axes), ddof=1, keepdims=True).astype(x.dtype)

    def resize(self, x, size, mode: str = "nearest"):
        height, width = (int(s) for s in size)
        in_h, in_w = x.shape[-2:]
        if mode == "nearest":
            # torch's legacy "nearest": src = floor(dst * in / out)
            rows = np.minimum((np.arange(height) * (in_h / height)).astype(np.int64), in_h - 1)
            cols = np.minimum((np.arange(width) * (in_w / width)).astype(np.int64), in_w - 1)
            return x[..., rows[:, None], cols[None, :]]
        if mode != "bilinear":
            raise ValueError(f"Unknown resize mode {mode!r}; use 'nearest' or 'bilinear'.")
        r0, r1, wr = _source_index(height, in_h)
        c0, c1, wc = _source_index(width, in_w)
        xf = x if x.dtype == np.float64 else x.astype(np.float32, copy=False)
        top = xf[..., r0, :] * (1 - wr)[:, None] + xf[..., r1, :] * wr[:, None]
        out = top[..., c0] * (1 - wc) + top[..., c1] * wc
        return out.astype(x.dtype, copy=False)

    def no_grad(self):
        return contextlib.nullcontext()

    def randn(self, shape, dtype: str, generator: Any, like=None):
        # NumPy has no generator type of its own beyond np.random.Generator, which core handles.
        if generator is None:
            return np.random.standard_normal(tuple(shape)).astype(_np_dtype(dtype))
        raise TypeError(
            f"The numpy backend cannot draw from a {type(generator).__name__}; pass a fewstep.Generator, "
            f"a np.random.Generator or an int seed."
        )
