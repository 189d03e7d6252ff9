"""The TensorOps protocol: the few tensor operations fewstep needs from a framework.

Core code (schedulers, LoRA maths, pipelines) is written against this protocol and never imports a
framework. Spelling follows the Array API (`permute_dims`, `concat`) so the protocol could later
collapse into an `xp` namespace. Arithmetic is not here: tensors combine with `+ - * /` and Python
floats, which every backend's tensors support natively and which keeps dtypes as the user gave them.

Dtypes cross the boundary as strings: "float32", "float16", "bfloat16", "float64", "int64", "int32",
"bool". A new op is added here, to all three backends and to tests/test_backend_contract.py in the
same commit.
"""

from __future__ import annotations

from typing import Any, ContextManager, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

Tensor = Any  # a backend's native tensor type (np.ndarray, torch.Tensor, mindspore.Tensor)

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPES = FLOAT_DTYPES + ("int32", "int64", "uint8", "bool")


def check_dtype(dtype: str) -> str:
    """Validate a dtype name, accepting framework-style aliases such as `torch.float16`."""
    name = str(dtype).rsplit(".", 1)[-1]
    aliases = {"half": "float16", "float": "float32", "double": "float64", "fp16": "float16",
               "fp32": "float32", "bf16": "bfloat16", "long": "int64", "int": "int32"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return name


@runtime_checkable
class TensorOps(Protocol):
    """What a backend implements. `like` arguments place results on the device of a given tensor."""

    name: str

    def is_tensor(self, x: Any) -> bool:
        """True if `x` is this backend's native tensor type."""

    def from_numpy(self, a: np.ndarray, like: Optional[Tensor] = None, dtype: Optional[str] = None) -> Tensor:
        """A native tensor with `a`'s values, on `like`'s device, cast to `dtype` (default: `like`'s
        dtype if given, else `a`'s). Casting happens after the values are on the framework, so a
        float32 array cast to float16 rounds as the framework rounds."""

    def to_numpy(self, x: Tensor) -> np.ndarray:
        """Values on the host. bfloat16 (which NumPy lacks) comes back as float32."""

    def dtype_name(self, x: Tensor) -> str:
        """The dtype of `x` as one of `DTYPES`."""

    def shape(self, x: Tensor) -> Tuple[int, ...]:
        """The shape of `x` as a tuple of ints."""

    def cast(self, x: Tensor, dtype: str) -> Tensor:
        """`x` converted to `dtype` (a no-op returning `x` when it already has it)."""

    def reshape(self, x: Tensor, shape: Sequence[int]) -> Tensor: ...

    def permute_dims(self, x: Tensor, axes: Sequence[int]) -> Tensor: ...

    def concat(self, xs: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    def split(self, x: Tensor, sections: Union[int, Sequence[int]], axis: int = 0) -> list:
        """`sections` an int: that many equal parts; a list: the sizes of the parts."""

    def where(self, cond: Tensor, a: Tensor, b: Tensor) -> Tensor: ...

    def clip(self, x: Tensor, lo: Union[float, Tensor, None], hi: Union[float, Tensor, None]) -> Tensor:
        """Bounds are Python floats or tensors broadcastable to `x`; None means unbounded."""

    def matmul(self, a: Tensor, b: Tensor) -> Tensor: ...

    def matmul_add(self, x: Tensor, a: Tensor, b: Tensor, scale: float = 1.0, out: Optional[Tensor] = None) -> Tensor:
        """`x + scale * (a @ b)` for 2-D `a`, `b` and `x` of shape (rows of a, columns of b), all of
        one dtype. With `out` (x's shape and dtype, may be `x` itself) the result is written into it
        where the framework can (torch, NumPy; MindSpore returns a new tensor): use the returned
        tensor either way. LoRA fusion needs it: one fused kernel (torch.addmm) makes one pass over
        a large weight and, with `out`, allocates nothing."""

    def copy_into(self, out: Tensor, x: Tensor) -> Tensor:
        """`x`'s values, cast to `out`'s dtype (the framework's rounding, as `cast`), written into `out`
        (same shape and device) where the framework can (torch, NumPy; MindSpore returns a new tensor):
        use the returned tensor either way. LoRA fusion writes a float32-accumulated half-precision
        weight back into the weight's own memory with it, instead of allocating a new weight."""

    def host_view(self, x: Tensor) -> Optional[np.ndarray]:
        """A writable NumPy array sharing `x`'s memory, when `x` is a contiguous tensor in host memory of a
        dtype NumPy has (torch on the CPU, NumPy); None otherwise (an accelerator tensor, bfloat16,
        MindSpore, whose runtime may still be reading a tensor when Python gets it back). LoRA's
        keep_base="file" reads a base weight from its file straight into the fused weight it
        re-fuses, where there is such a view."""

    def host_buffer(self, shape: Sequence[int], dtype: str, like: Optional[Tensor] = None) -> np.ndarray:
        """An uninitialised NumPy array for host copies of tensors like `like` (bfloat16 as float32):
        page-locked (pinned) memory where `like` is on a CUDA device and the driver agrees, so copies
        between it and the device run at full bus speed, unlocked when the array is freed; ordinary
        memory otherwise. LoRA's keep_base="host" keeps base weights in it."""

    def all_finite(self, x: Tensor) -> bool:
        """True when no element of `x` is NaN or infinite. Computed where `x` lives: one Python bool
        comes back to the host, not the tensor (LoRA's safe_fusing checks every fused weight)."""

    def std(self, x: Tensor, axes: Sequence[int]) -> Tensor:
        """The standard deviation of a float tensor over `axes`, those axes kept (size 1), with Bessel's
        correction (divisor n - 1), as torch's `x.std(dim=axes, keepdim=True)`; in `x`'s dtype.
        Classifier-free guidance's `guidance_rescale` takes it per image (diffusers' `rescale_noise_cfg`)."""

    def resize(self, x: Tensor, size: Tuple[int, int], mode: str = "nearest") -> Tensor:
        """Resize an NCHW tensor to `size` = (height, width); mode "nearest" or "bilinear"
        (align_corners=False, no antialias, as torch's `interpolate`)."""

    def no_grad(self) -> ContextManager:
        """A context in which no autograd graph is recorded."""

    def randn(self, shape: Sequence[int], dtype: str, generator: Any, like: Optional[Tensor] = None) -> Tensor:
        """Standard normal noise from this framework's own generator type (`torch.Generator` on
        torch; None means the framework's global RNG), drawn as that framework's reference library
        draws it. Generators fewstep knows itself (`fewstep.Generator`, `np.random.Generator`) never
        reach here: `fewstep.core.noise` turns them into NumPy first. Raises TypeError for a
        generator type the backend does not know."""
