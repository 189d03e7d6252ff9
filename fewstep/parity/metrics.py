"""How two recordings of the same tensor are compared, and the default bound per dtype.

One number decides "in bounds": the relative L2 difference ||a - b|| / max(||a||, ||b||), in float64.
It does not blow up where a tensor crosses zero (an elementwise relative error does) and is what
mindone's own cross-framework tests bound (5e-3 float32, 5e-2 float16 on final outputs). fewstep's
stages agree far closer than that across frameworks (measured below 1e-5 in float32), so its default
bounds are tighter and a planted 1e-2 change in one weight stands out. An absolute floor (`atol`)
keeps tensors that are zero or nearly so on both sides from failing on rounding noise.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

# Default relative-L2 bound by the less precise of the two sides' dtypes: float32 runs of torch and
# MindSpore agree to ~1e-6 per stage; float16 and bfloat16 round at 2^-11 and 2^-8 per op, and the
# error grows through a UNet's depth and the steps.
DEFAULT_RTOL = {"float64": 1e-4, "float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}
DEFAULT_ATOL = 1e-6
_PRECISION = ("float64", "float32", "float16", "bfloat16")


def default_rtol(dtype_a: str, dtype_b: str) -> float:
    worst = max((dtype_a, dtype_b), key=lambda d: _PRECISION.index(d) if d in _PRECISION else 1)
    return DEFAULT_RTOL.get(worst, DEFAULT_RTOL["float32"])


def difference(a: np.ndarray, b: np.ndarray) -> Tuple[float, float, float]:
    """(max abs, max rel, rel L2) between two arrays of one shape, computed in float64.

    max rel is max |a - b| / max(|a|, |b|) over elements where either is nonzero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
    if diff.size == 0:
        return 0.0, 0.0, 0.0
    if not np.all(np.isfinite(diff)):  # inf or NaN on one side (an fp16 overflow): out of any bound
        return float("inf"), float("inf"), float("inf")
    max_abs = float(np.max(diff))
    scale = np.maximum(np.abs(a), np.abs(b))
    nonzero = scale > 0
    max_rel = float(np.max(diff[nonzero] / scale[nonzero])) if np.any(nonzero) else 0.0
    norm = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
    rel_l2 = float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0
    return max_abs, max_rel, rel_l2


def within(max_abs: float, rel_l2: float, rtol: float, atol: float) -> bool:
    """In bounds: relative L2 within rtol, or every element within atol."""
    return bool(rel_l2 <= rtol or max_abs <= atol)
