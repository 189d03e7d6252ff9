"""TensorOps for PyTorch tensors.

Every op is the plain torch call (those that `mindspore.mint` spells alike are written once, in
`fewstep.backends.common.TorchLikeOps`); the NumPy backend is the oracle it is tested against
(tests/test_backend_contract.py). `randn` delegates to diffusers' `randn_tensor`, so a
`torch.Generator` (or a list of them) gives exactly the noise a diffusers pipeline would draw.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from fewstep.backends.common import DtypeTable, TorchLikeOps, as_ints, host_dtype

TORCH_DTYPES = DtypeTable(torch)


class Backend(TorchLikeOps):
    name = "torch"
    xp = torch
    tensor_type = torch.Tensor
    dtypes = TORCH_DTYPES

    _wrap = staticmethod(torch.from_numpy)

    @staticmethod
    def _astype(x, native_dtype):
        return x.to(native_dtype)

    @staticmethod
    def _place(t, like, native_dtype):
        device = like.device if like is not None else t.device
        # The cast is torch's (not NumPy's astype), so float32 -> float16/bfloat16 rounds as torch
        # rounds; moving and casting in one `.to` makes at most one copy.
        if device != t.device or native_dtype != t.dtype:
            t = t.to(device=device, dtype=native_dtype)
        return t

    def to_numpy(self, x) -> np.ndarray:
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.cpu().numpy()

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def clip(self, x, lo, hi):
        # Two number bounds: one kernel (a scheduler's clip_sample runs it every step); torch.clamp is
        # max-then-min as np.clip, also when lo > hi (all become hi).
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            out = torch.clamp(x, min=lo, max=hi)
        else:
            # one bound at a time, so a float bound and a tensor bound can be mixed
            out = x
            if lo is not None:
                out = torch.clamp(out, min=lo)
            if hi is not None:
                out = torch.clamp(out, max=hi)
        return out if out.dtype == x.dtype else out.to(x.dtype)  # bounds may promote; the result keeps x's dtype

    def matmul(self, a, b):
        return torch.matmul(a, b)

    def matmul_add(self, x, a, b, scale: float = 1.0, out=None):
        # addmm applies scale and adds x in the GEMM's own epilogue: one pass over the result.
        if out is None or _frozen(out):
            return torch.addmm(x, a, b, alpha=scale)
        return torch.addmm(x, a, b, alpha=scale, out=out)

    def copy_into(self, out, x):
        if _frozen(out):
            return x.to(out.dtype)
        return out.copy_(x)  # casts as .to() does

    def host_view(self, x):
        if (x.device.type != "cpu" or x.dtype == torch.bfloat16 or not x.is_contiguous() or x.is_conj()
                or x.is_neg() or _frozen(x)):
            return None
        return x.detach().numpy()

    def host_buffer(self, shape, dtype: str, like=None):
        buffer = np.empty(as_ints(shape), dtype=host_dtype(dtype))
        if like is not None and like.device.type == "cuda":
            _pin(buffer)
        return buffer

    def all_finite(self, x) -> bool:
        return bool(torch.isfinite(x).all())

    def std(self, x, axes):
        return torch.std(x, dim=as_ints(axes), keepdim=True)

    def resize(self, x, size, mode: str = "nearest"):
        size = as_ints(size)
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
                "`pip install 'fewstep[torch]'`."
            ) from err
        if isinstance(generator, tuple):
            generator = list(generator)
        return randn_tensor(
            as_ints(shape),
            generator=generator,
            device=like.device if like is not None else None,
            dtype=TORCH_DTYPES.native(dtype),
        )


def _frozen(t) -> bool:
    """An inference tensor (made under torch.inference_mode) outside that mode: torch refuses to write it,
    so the ops that write in place return a new tensor instead, as they may."""
    return t.is_inference() and not torch.is_inference_mode_enabled()


def _pin(buffer: np.ndarray) -> bool:
    """Page-lock `buffer`'s memory for CUDA copies (cudaHostRegister), unlocked when the array is freed.
    Registered rather than taken from torch's pinned-memory cache, which rounds every block up to a
    power of two and keeps freed blocks: a kept base weight (SDXL: 5-10 GB) must cost its size and go
    back when unfused. Where the driver refuses (too much locked memory), the buffer stays pageable:
    copies from it are slower, not wrong."""
    if buffer.nbytes == 0:
        return False
    cudart = torch.cuda.cudart()
    address = buffer.ctypes.data
    if int(cudart.cudaHostRegister(address, buffer.nbytes, 0)) != 0:
        return False
    # not at interpreter exit, when CUDA may be torn down already (the process's memory goes with it anyway)
    weakref.finalize(buffer, cudart.cudaHostUnregister, address).atexit = False
    return True
