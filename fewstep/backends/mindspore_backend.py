"""TensorOps for MindSpore tensors (PyNative mode).

Ops are `mindspore.mint` where that has a CPU kernel, else the older `mindspore.ops` equivalent, so
the same code runs on Ascend and on a laptop CPU. MindSpore's CPU kernels also lack bfloat16 for
several ops (Select, Maximum/Minimum, MatMul, the resize kernels); on CPU only, those ops run in
float32 and cast back, which is exact for selection ops (where, clip, nearest resize) and rounds once
for matmul and bilinear resize. Nothing is substituted on Ascend.
"""

from __future__ import annotations

import contextlib
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import mint, ops

from fewstep.backends.common import DtypeTable, TorchLikeOps, as_ints, host_dtype

MS_DTYPES = DtypeTable(ms, spelling={"bool": "bool_"})

_CONFIGURED = False
_ON_CPU = False


def _configure_once() -> None:
    """Put MindSpore in the state fewstep runs it in, once per process.

    On Ascend nothing is changed: the user's context is theirs. Elsewhere PyNative mode is required
    (fewstep calls ops eagerly) and is set only if another mode is active. On CPU,
    `mindspore.runtime.launch_blocking()` makes kernels run synchronously: about 5x faster on small
    CPU workloads, and an op without a CPU kernel fails where it is called rather than later in an
    unrelated op; and the CPU stand-ins of `fewstep.backends.mindspore_cpu` are installed."""
    global _CONFIGURED, _ON_CPU
    if _CONFIGURED:
        return
    _CONFIGURED = True
    target = ms.get_context("device_target")
    if target == "Ascend":
        return
    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    if target == "CPU":
        _ON_CPU = True
        ms.runtime.launch_blocking()
        # mindone's models reach mint ops without a CPU kernel: the stand-ins go in with the backend, before
        # fewstep imports mindone (removable: fewstep.backends.mindspore_cpu.uninstall / cpu_kernels)
        from fewstep.backends.mindspore_cpu import install_cpu_kernels

        install_cpu_kernels(complete_exports=False)


def _cpu_bf16(x) -> bool:
    """True where x is bfloat16 on a CPU run, whose kernels for this op lack bfloat16."""
    return _ON_CPU and isinstance(x, ms.Tensor) and x.dtype == ms.bfloat16


def _up(x):
    return x.astype(ms.float32) if _cpu_bf16(x) else x


class Backend(TorchLikeOps):
    name = "mindspore"
    xp = mint
    tensor_type = ms.Tensor
    dtypes = MS_DTYPES

    _wrap = staticmethod(ms.Tensor.from_numpy)

    def __init__(self):
        _configure_once()

    @staticmethod
    def _astype(x, native_dtype):
        return x.astype(native_dtype)

    @staticmethod
    def _place(t, like, native_dtype):
        # The cast is MindSpore's, so float32 -> float16/bfloat16 rounds as MindSpore rounds.
        # No explicit device move: in PyNative mode a host tensor is placed on the device by the
        # runtime when an op first consumes it, which is how mindone feeds NumPy noise too.
        return t.astype(native_dtype) if native_dtype != t.dtype else t

    def to_numpy(self, x) -> np.ndarray:
        if x.dtype == ms.bfloat16:
            x = x.astype(ms.float32)
        return x.asnumpy()

    def where(self, cond, a, b):
        if _cpu_bf16(a) or _cpu_bf16(b):
            return mint.where(cond, _up(a), _up(b)).astype(ms.bfloat16)
        return mint.where(cond, a, b)

    def clip(self, x, lo, hi):
        # One bound at a time, so a float bound and a tensor bound can be mixed; max-then-min is
        # what np.clip does (also when lo > hi). Tensor bounds may promote; the result keeps x's dtype.
        out = _up(x)
        if lo is not None:
            out = mint.clamp(out, min=self._bound(lo, out))
        if hi is not None:
            out = mint.clamp(out, max=self._bound(hi, out))
        return out if out.dtype == x.dtype else out.astype(x.dtype)

    @staticmethod
    def _bound(b, x):
        # MindSpore passes a Python float bound through float32 even for a float64 tensor
        # (clip(x, 0.7) would give float64(float32(0.7))); a float64 0-d tensor cast to x's dtype
        # rounds the bound once, as NumPy and torch do.
        if isinstance(b, ms.Tensor):
            return _up(b)
        return ms.Tensor(np.array(b, dtype=np.float64)).astype(x.dtype)

    def matmul(self, a, b):
        if _cpu_bf16(a) or _cpu_bf16(b):
            return mint.matmul(_up(a), _up(b)).astype(ms.bfloat16)
        return mint.matmul(a, b)

    def matmul_add(self, x, a, b, scale: float = 1.0, out=None):
        # mint.addmm has no CPU kernel; matmul, scale, add is the same sum. `out` is not written:
        # MindSpore allocates from its own memory pool, so a new tensor costs no fresh memory.
        product = _up(self.matmul(a, b))
        if scale != 1.0:
            # as a tensor of the product's dtype: MindSpore would pass a Python float through float32
            product = product * ms.Tensor(np.array(scale, dtype=np.float64)).astype(product.dtype)
        return (_up(x) + product).astype(x.dtype) if _cpu_bf16(x) else x + product

    def copy_into(self, out, x):
        # not written in place: MindSpore allocates from its own memory pool, so a new tensor costs no fresh
        # memory, and a Parameter's data is rebound rather than written (mindspore_components)
        return self.cast(x, self.dtype_name(out))

    def host_view(self, x):
        return None  # the runtime may still be writing or reading the tensor's memory when Python gets it back

    def host_buffer(self, shape, dtype: str, like=None):
        return np.empty(as_ints(shape), dtype=host_dtype(dtype))

    def all_finite(self, x) -> bool:
        return bool(mint.isfinite(_up(x)).all())  # float32 for bfloat16 on CPU is exact: same verdict

    def std(self, x, axes):
        # Written out in mint ops, which have CPU kernels (mint.std and mint.var have none there); the mean
        # is subtracted first, as torch's two-pass kernel does. (mindone's rescale_noise_cfg calls
        # Tensor.std(dim=, keepdim=), which MindSpore reads as ddof=0: diffusers' and torch's is n - 1.)
        axes = as_ints(axes)
        up = _up(x)
        count = int(np.prod([up.shape[a] for a in axes]))
        centred = up - mint.mean(up, dim=axes, keepdim=True)
        out = mint.sqrt(mint.sum(centred * centred, dim=axes, keepdim=True) / float(count - 1))
        return out.astype(x.dtype) if out.dtype != x.dtype else out

    def resize(self, x, size, mode: str = "nearest"):
        size = as_ints(size)
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Unknown resize mode {mode!r}; use 'nearest' or 'bilinear'.")
        y = _up(x)
        if mode == "nearest":
            out = mint.nn.functional.interpolate(y, size=size, mode="nearest")
        elif _ON_CPU:
            # mint's UpsampleBilinear2D has no CPU kernel; ops.interpolate (ResizeBilinearV2 with
            # half-pixel centres) computes the same align_corners=False bilinear.
            out = ops.interpolate(y, size=size, mode="bilinear", align_corners=False)
        else:
            out = mint.nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return out if out.dtype == x.dtype else out.astype(x.dtype)

    def no_grad(self):
        # `mindspore._no_grad` (what mindone uses) switches the PyNative executor's grad recording
        # off. If a future MindSpore drops it, a null context is equivalent for fewstep: PyNative
        # only records a graph inside `mindspore.grad`/`value_and_grad`, which fewstep never calls.
        no_grad = getattr(ms, "_no_grad", None)
        return no_grad() if no_grad is not None else contextlib.nullcontext()

    def randn(self, shape, dtype: str, generator: Any, like=None):
        if generator is not None:
            raise TypeError(
                f"The mindspore backend cannot draw from a {type(generator).__name__}; pass a "
                f"fewstep.Generator, a np.random.Generator (or a list of either, one per batch item), an "
                f"int seed, or None."
            )
        # As mindone's randn with generator=None: fresh entropy, float64 standard normal, then cast.
        draw = np.random.default_rng().standard_normal(as_ints(shape))
        return self.from_numpy(draw, like=like, dtype=dtype)
