"""TensorOps for PyTorch tensors.

Every op is the plain torch call; the NumPy backend is the oracle it is tested against
(tests/test_backend_contract.py). `randn` delegates to diffusers' `randn_tensor`, so a
`torch.Generator` (or a list of them) gives exactly the noise a diffusers pipeline would draw.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from fewstep.core.ops import check_dtype

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for a fewstep dtype name (or alias such as "fp16" / "torch.float16")."""
    return _DTYPES[check_dtype(dtype)]


def _equal_parts(length: int, sections: int, axis: int) -> int:
    if sections <= 0 or length % sections:
        raise ValueError(
            f"Cannot split an axis of length {length} (axis {axis}) into {sections} equal parts; pass a "
            f"list of part sizes instead."
        )
    return length // sections


class Backend:
    name = "torch"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def from_numpy(self, a, like=None, dtype: Optional[str] = None):
        a = np.asarray(a)
        # torch.from_numpy shares memory with the array, which is fine for a writable C-contiguous
        # array. A read-only array (torch would let writes through it), a strided view (negative
        # strides are refused) or a non-native byte order is copied first.
        if not (a.flags.writeable and a.flags.c_contiguous and a.dtype.isnative):
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
        t = torch.from_numpy(a)
        if dtype is None and like is not None:
            target = like.dtype
        else:
            target = torch_dtype(dtype) if dtype is not None else t.dtype
        device = like.device if like is not None else t.device
        # The cast is torch's (not NumPy's astype), so float32 -> float16/bfloat16 rounds as torch
        # rounds; moving and casting in one `.to` makes at most one copy.
        if device != t.device or target != t.dtype:
            t = t.to(device=device, dtype=target)
        return t

    def to_numpy(self, x) -> np.ndarray:
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.cpu().numpy()

    def dtype_name(self, x) -> str:
        try:
            return _NAMES[x.dtype]
        except KeyError:
            return check_dtype(str(x.dtype))  # raises ValueError naming the supported dtypes

    def shape(self, x):
        return tuple(int(d) for d in x.shape)

    def cast(self, x, dtype: str):
        target = torch_dtype(dtype)
        return x if x.dtype == target else x.to(target)

    def reshape(self, x, shape: Sequence[int]):
        return torch.reshape(x, tuple(int(s) for s in shape))

    def permute_dims(self, x, axes: Sequence[int]):
        return torch.permute(x, tuple(int(a) for a in axes))

    def concat(self, xs, axis: int = 0):
        return torch.cat(list(xs), dim=axis)

    def split(self, x, sections, axis: int = 0):
        if isinstance(sections, (int, np.integer)):
            # torch.split(x, int) takes a part *size*; the protocol's int is a *number* of parts.
            size = _equal_parts(int(x.shape[axis]), int(sections), axis)
            return list(torch.split(x, size, dim=axis))
        return list(torch.split(x, [int(s) for s in sections], dim=axis))

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def clip(self, x, lo, hi):
        # One bound at a time, so a float bound and a tensor bound can be mixed; max-then-min is
        # what np.clip does (also when lo > hi). Tensor bounds may promote; the result keeps x's dtype.
        out = x
        if lo is not None:
            out = torch.clamp(out, min=lo)
        if hi is not None:
            out = torch.clamp(out, max=hi)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def matmul(self, a, b):
        return torch.matmul(a, b)

    def matmul_add(self, x, a, b, scale: float = 1.0, out=None):
        # addmm applies scale and adds x in the GEMM's own epilogue: one pass over the result.
        if out is None:
            return torch.addmm(x, a, b, alpha=scale)
        return torch.addmm(x, a, b, alpha=scale, out=out)

    def resize(self, x, size, mode: str = "nearest"):
        size = tuple(int(s) for s in size)
        if mode == "nearest":
            return torch.nn.functional.interpolate(x, size=size, mode="nearest")
        if mode == "bilinear":
            return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        raise ValueError(f"Unknown resize mode {mode!r}; use 'nearest' or 'bilinear'.")

    def no_grad(self):
        return torch.no_grad()

    def randn(self, shape, dtype: str, generator: Any, like=None):
        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        ok = generator is None or (len(gens) > 0 and all(isinstance(g, torch.Generator) for g in gens))
        if not ok:
            raise TypeError(
                f"The torch backend cannot draw from a {type(generator).__name__}; pass a fewstep.Generator, "
                f"a np.random.Generator, a torch.Generator (or a list of them, one per batch item), an int "
                f"seed, or None."
            )
        try:
            from diffusers.utils.torch_utils import randn_tensor
        except ImportError as err:  # diffusers is the reference for how torch noise is drawn
            raise ImportError(
                "Drawing noise from a torch.Generator uses diffusers' randn_tensor; install it with "
                "`pip install 'fewstep[torch]' -c constraints.txt`."
            ) from err
        if isinstance(generator, tuple):
            generator = list(generator)
        return randn_tensor(
            tuple(int(s) for s in shape),
            generator=generator,
            device=like.device if like is not None else None,
            dtype=torch_dtype(dtype),
        )
