"""Noise schedules: betas, alphas_cumprod and the zero-terminal-SNR rescale.

Every table here is bit-identical to what diffusers computes with torch 2.13 on the CPU, because a
schedule that differs by one ulp at one timestep already changes every step coefficient after it.
Two torch details matter (shared/reference/tcd-lcm.md §1.1-1.3):

- `torch.linspace(start, end, n, dtype=float32)` fills the first half forwards from `start` and the
  second half backwards from `end`, and the multiply-add is contracted (one rounding). Emulated as
  `f32(f64(start32) + f64(step32) * i)` and `f32(f64(end32) - f64(step32) * (n - 1 - i))`.
- `torch.cumprod` on float32 accumulates in float64 and stores float32.

All results are float32 NumPy arrays of length `num_train_timesteps`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

_F32 = np.float32
_F64 = np.float64


def torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, bit for bit.

    Filling from both ends keeps the last value exactly `end`; the float64 multiply-add followed by
    one rounding to float32 reproduces the FMA-contracted kernel (a float32 multiply then add would
    differ by one ulp in ~15% of entries)."""
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"linspace needs a non-negative number of steps, got {steps}.")
    start32, end32 = _F32(start), _F32(end)
    if steps == 0:
        return np.zeros(0, dtype=_F32)
    if steps == 1:
        return np.array([start32], dtype=_F32)
    step32 = (end32 - start32) / _F32(steps - 1)  # float32 arithmetic, as torch computes the step
    i = np.arange(steps, dtype=_F64)
    halfway = steps // 2
    forward = _F64(start32) + _F64(step32) * i
    backward = _F64(end32) - _F64(step32) * (steps - 1 - i)
    return np.where(i < halfway, forward, backward).astype(_F32)


def linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """DDPM's linear schedule: betas evenly spaced from beta_start to beta_end."""
    return torch_linspace_float32(beta_start, beta_end, num_train_timesteps)


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """Stable Diffusion's schedule: evenly spaced in sqrt(beta), squared in float32."""
    roots = torch_linspace_float32(beta_start**0.5, beta_end**0.5, num_train_timesteps)
    return roots * roots


def _cosine_alpha_bar(t: float) -> float:
    # Nichol & Dhariwal (2021), eq. 17: a cosine alpha_bar with offset s = 0.008 so that beta_0 is not tiny.
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """GLIDE's cosine schedule: beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T), capped at max_beta
    so the last steps stay invertible. Computed in Python floats, stored float32."""
    n = int(num_train_timesteps)
    betas = [min(1 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=_F32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """The betas a scheduler config describes; `trained_betas` overrides the named schedule."""
    if trained_betas is not None:
        return np.array(trained_betas, dtype=_F32).reshape(-1)
    if beta_schedule == "linear":
        return linear_betas(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        return scaled_linear_betas(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "squaredcos_cap_v2":
        return squaredcos_cap_v2_betas(num_train_timesteps)
    raise ValueError(
        f"Unknown beta_schedule {beta_schedule!r}; use one of {', '.join(repr(s) for s in BETA_SCHEDULES)}, "
        f"or pass trained_betas."
    )


def cumulative_alphas(alphas: np.ndarray) -> np.ndarray:
    """Running product of float32 alphas, accumulated in float64 and stored float32 (torch's cumprod)."""
    return np.cumprod(np.asarray(alphas, dtype=_F32).astype(_F64)).astype(_F32)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{i<=t} (1 - beta_i): the signal fraction left at timestep t."""
    return cumulative_alphas(_F32(1.0) - np.asarray(betas, dtype=_F32))


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2023), "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.

    Shift and scale sqrt(alpha_bar) so that its last value is exactly 0 (pure noise at t = T-1, zero
    SNR) while its first value is unchanged, then turn it back into betas. All arithmetic in float32,
    in torch's order, so the result is bit-identical. The last beta becomes 1, so alpha_bar[T-1] = 0:
    only v- or sample-prediction models can be stepped from there (epsilon would divide by 0)."""
    root = np.sqrt(alphas_cumprod(betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root * root
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return (_F32(1.0) - alphas).astype(_F32)
