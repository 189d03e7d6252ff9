"""The LoRA maths: W' = W + sum_i s_i * (up_i @ down_i), with s_i = weight_i * alpha_i / rank_i * lora_scale.

A conv LoRA (down: (r, in, kh, kw), up: (out, r, 1, 1)) is the same product on the flattened
kernel: delta[o, i, y, x] = sum_r up[o, r] * down[r, i, y, x], i.e. up (out, r) @ down (r, in*kh*kw)
reshaped to (out, in, kh, kw). PEFT computes the 3x3 case as a convolution, which sums the same r
terms; the 1x1 case and Linear layers it computes exactly as here.

Arithmetic follows PEFT's LoraLayer.get_delta_weight / merge: the scale is a Python float evaluated
as PEFT does, ((weight * alpha) / rank) * lora_scale; the product is computed in the weight dtype;
adapters are added to the base one after another, in the order they are active. One difference in
rounding: `ops.matmul_add` lets torch apply the scale and the addition inside the GEMM (addmm), where
PEFT rounds (up @ down), then its scaled copy, then the sum: an ulp apart at most (bit-identical on
every weight the tests and the benchmark compare).
Half-precision weights are combined in float32 and rounded once at the end (PEFT on CPU also
computes the product in float32, but rounds each delta to half before adding it).

Factors are kept on the device unrounded (`factor_dtype`: float32, float64 where the file or the weight
is) and rounded to the weight's dtype as each fusion reads them (`term_factors`), so a pipeline moved to
another dtype fuses from the file's values as loading in that dtype would, not from values rounded to
the old dtype (float16 -> float32 would otherwise keep float16 factors).

The result is always computed from the saved base weight, never from a previously fused one, so a
fused weight depends only on (base, active adapters, their scales) and never on history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

HALF = ("float16", "bfloat16")

# The most one fusion may change any element of a weight: sum |scale| x `LoraLayer.peak` over its terms. A LoRA
# is trained as a small correction (the demo LoRA's peak bound is 0.24 at weight 1), so this leaves room for
# adapter weights in the thousands, while a weight like -1e30 is refused before anything is
# written: it would overflow the activations to inf (a black image) even where a float32 weight stays finite, and
# a fused float16 weight stays finite under it (|base| + 1e4 < 65504). Checked from numbers known on the host,
# so it costs no pass over the weights and no device sync (a finite check of every fused weight would cost both).
MAX_CHANGE = 1e4


@dataclass(frozen=True)
class LoraLayer:
    """One module's LoRA as read from a file: down (r, in) or (r, in, kh, kw); up (out, r) or
    (out, r, 1, 1); alpha; rslora: scale by alpha / sqrt(r) instead of alpha / r."""

    down: np.ndarray
    up: np.ndarray
    alpha: float
    rslora: bool = False

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def peak(self) -> float:
        """A bound on |up @ down| at any element, from the factors alone: |sum_r up[o, r] down[r, i]| is at most
        sum_r max_o |up[o, r]| x max_i |down[r, i]|. Exact for rank 1, above the true peak where terms cancel;
        computed in float64 on the host (no overflow for any float32 factor), once per load."""
        up = self.up.reshape(self.up.shape[0], -1)
        down = self.down.reshape(self.down.shape[0], -1)
        if up.size == 0 or down.size == 0:
            return 0.0
        return float(np.abs(up).max(axis=0).astype(np.float64) @ np.abs(down).max(axis=1).astype(np.float64))

    def scaling(self, weight: float = 1.0, lora_scale: float = 1.0) -> float:
        return scaling(self.alpha, self.rank, self.rslora, weight, lora_scale)

    def device_factors(self, ops, like, weight_dtype: str):
        """(up (out, r), down (r, in*kh*kw)) as tensors on `like`'s device in `factor_dtype`: the file's
        values exactly; `term_factors` rounds them for a weight of a given dtype."""
        keep = factor_dtype(weight_dtype, str(self.up.dtype), str(self.down.dtype))
        up = ops.from_numpy(self.up.reshape(self.up.shape[0], -1), like=like, dtype=keep)
        down = ops.from_numpy(self.down.reshape(self.down.shape[0], -1), like=like, dtype=keep)
        return up, down


def scaling(alpha: float, rank: int, rslora: bool = False, weight: float = 1.0, lora_scale: float = 1.0) -> float:
    """The factor of up @ down, in PEFT's order of operations so the Python float is PEFT's, bit for bit."""
    divisor = math.sqrt(rank) if rslora else rank
    return weight * alpha / divisor * lora_scale


def compute_dtype(weight_dtype: str) -> str:
    return "float32" if weight_dtype in HALF else weight_dtype


def factor_dtype(weight_dtype: str, *source_dtypes: str) -> str:
    """The dtype LoRA factors are kept in for a weight of `weight_dtype`, read from arrays of
    `source_dtypes`: one that holds the file's values exactly (float16, bfloat16 and float32 all fit in
    float32) and is no narrower than the weight's compute dtype."""
    return "float64" if "float64" in (weight_dtype, *source_dtypes) else "float32"


def term_factors(ops, up, down, weight_dtype: str):
    """Kept factors as one fusion into a `weight_dtype` weight uses them: rounded to the weight's dtype,
    as PEFT stores factors in the base layer's dtype, then widened to float32 for half-precision weights
    (a cast to the dtype a factor already has costs nothing)."""
    compute = compute_dtype(weight_dtype)
    return tuple(ops.cast(ops.cast(f, weight_dtype), compute) for f in (up, down))


def work_buffer(ops, like, elements: int):
    """A flat float32 tensor of `elements` on `like`'s device, for `fused_weight(work=)`."""
    return ops.from_numpy(np.empty(int(elements), dtype=np.float32), like=like, dtype="float32")


def fused_weight(ops, base, terms: Sequence[Tuple[object, object, float]], out=None, work=None):
    """base + sum(scale * up @ down) for terms (up, down, scale) from `LoraLayer.device_factors` (each
    rounded here by `term_factors`), in base's shape and dtype.

    `out`: a tensor of base's shape and dtype that the result is written into (where the framework
    writes in place: `ops.matmul_add`, `ops.copy_into`), which may be `base` itself: the weight fused
    before, or the weight being fused for the first time once its base is kept elsewhere. Without it
    `base` is not written and the result is a new tensor. Fresh memory is what fusing a large LoRA
    mostly costs on a CPU (page faults on first touch, and a heap that grows when new weights land
    between freed ones), so each term is one `matmul_add` (one pass over the weight in torch's addmm)
    accumulated in place, a half-precision weight is accumulated in one float32 copy and written back
    into `out`, and re-fusing allocates nothing but that copy. The values are the same either way.

    `work`: a flat float32 tensor on base's device (`work_buffer`) with at least as many elements as
    base, that holds the float32 copy of a half-precision weight instead of new memory: one buffer for
    all the weights of a refresh, so a process fusing hundreds of weights does not leave a heap of
    freed copies behind (glibc keeps freed blocks under its mmap threshold, up to 32 MiB, for reuse)."""
    dtype = ops.dtype_name(base)
    shape = ops.shape(base)
    compute = compute_dtype(dtype)
    rows = (shape[0], int(np.prod(shape[1:])))
    widened = compute != dtype
    if widened and work is not None:  # the float32 copy in the caller's buffer (exact: half widens exactly)
        size, total = rows[0] * rows[1], ops.shape(work)[0]
        flat = work if size == total else ops.split(work, [size, total - size])[0]
        acc = ops.copy_into(ops.reshape(flat, rows), ops.reshape(base, rows))
    else:
        acc = ops.reshape(ops.cast(base, compute), rows)  # widened: a new float32 tensor, ours to write
    if widened:
        target = acc
    else:
        target = ops.reshape(out, rows) if out is not None else None
    for i, (up, down, scale) in enumerate(terms):
        up, down = term_factors(ops, up, down, dtype)
        # the first term reads the base and writes the target (or a new tensor); later ones add in place
        acc = ops.matmul_add(acc, up, down, float(scale), out=target if i == 0 else acc)
    result = ops.reshape(acc, shape)
    if out is not None:
        return result if (terms and not widened) else ops.copy_into(out, result)
    if not terms and not widened:  # no term: a copy of the base, as a fused weight never aliases it
        return result * 1.0
    return ops.cast(result, dtype)
