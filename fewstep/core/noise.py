"""Turning whatever generator the user passed into noise on the right backend.

One place decides how each generator type draws, so schedulers and pipelines consume randomness in
the same order and the same way:

- `fewstep.Generator` (or a list of them): NumPy on the host, torch's CPU stream for that dtype;
- `np.random.Generator` (or a list): `standard_normal` in float64, cast to the dtype, as mindone draws;
- anything else (a `torch.Generator`, a list of them, None): the backend's own `randn`, which draws
  the way that framework's reference library draws (diffusers' `randn_tensor` on torch).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fewstep.core.ops import FLOAT_DTYPES
from fewstep.core.random import Generator


def _host_draw(generator: Any, shape: Sequence[int], dtype: str):
    """A NumPy draw for generator types core knows, or None for framework-native generators."""
    if isinstance(generator, Generator):
        # The dtype matters to the draw itself: for half types torch recomputes the last 16 values
        # of a tensor whose size is not a multiple of 16 from fresh uniforms.
        return generator.randn(shape, dtype=dtype if dtype in FLOAT_DTYPES else "float32")
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(tuple(shape))
    return None


def randn_like(ops, shape: Sequence[int], dtype: str, generator: Any, like: Any = None):
    """Standard normal noise of `shape` as a backend tensor of `dtype`, on `like`'s device.

    A list of generators draws one batch item each (shape[0] must equal its length), as diffusers'
    and mindone's `randn_tensor` do; a list of length one counts as a single generator."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        elif len(generator) != shape[0]:
            raise ValueError(
                f"A list of {len(generator)} generators was passed for a batch of {shape[0]}; pass one "
                f"generator per batch item, or a single generator."
            )
    if isinstance(generator, (list, tuple)):
        parts = [_host_draw(g, (1,) + shape[1:], dtype) for g in generator]
        if all(p is not None for p in parts):
            return ops.from_numpy(np.concatenate(parts, axis=0), like=like, dtype=dtype)
        if any(p is not None for p in parts):
            raise TypeError("A list of generators must all be of one type.")
        # framework-native generators: the backend draws the whole list itself
        return ops.randn(shape, dtype, list(generator), like=like)
    host = _host_draw(generator, shape, dtype)
    if host is not None:
        return ops.from_numpy(host, like=like, dtype=dtype)
    return ops.randn(shape, dtype, generator, like=like)
