"""The model-output parameterisations and the arithmetic every consistency step is made of.

x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDPM eq. 4), so x0 and eps are linear in (sample, model_output)
whatever the model predicts; a step is therefore a few linear combinations of tensors with
Python-float coefficients computed once in NumPy float64 (design.md, "Schedulers").
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Tuple

import numpy as np

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class Linear(NamedTuple):
    """`sample * sample_coef + model_output * model_coef`, as two Python floats."""

    sample: float
    model: float


def x0_and_eps_coefficients(alpha_t: float, prediction_type: str) -> Tuple[Linear, Linear]:
    """x0 and epsilon as linear combinations of (sample, model_output), from x_t = sqrt(a) x0 + sqrt(1-a) eps.

    epsilon:      x0 = (x_t - sqrt(1-a) eps_hat) / sqrt(a)
    sample:       x0 = x0_hat;                eps = (x_t - sqrt(a) x0_hat) / sqrt(1-a)
    v_prediction: x0 = sqrt(a) x_t - sqrt(1-a) v;   eps = sqrt(1-a) x_t + sqrt(a) v   (Salimans & Ho 2022)
    Division by zero gives inf/NaN coefficients, as the reference's tensor arithmetic would."""
    a = np.float64(alpha_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb = np.sqrt(a), np.sqrt(1.0 - a)
        if prediction_type == "epsilon":
            x0, eps = (1.0 / sa, -sb / sa), (0.0, 1.0)
        elif prediction_type == "sample":
            x0, eps = (0.0, 1.0), (1.0 / sb, -sa / sb)
        elif prediction_type == "v_prediction":
            x0, eps = (sa, -sb), (sb, sa)
        else:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; use one of {', '.join(map(repr, PREDICTION_TYPES))}."
            )
    return Linear(float(x0[0]), float(x0[1])), Linear(float(eps[0]), float(eps[1]))


def linear_combination(a: Any, ca: float, b: Any, cb: float) -> Any:
    """ca * a + cb * b as a new tensor. Python-float coefficients keep the tensors' dtype on every
    backend (a float16 latent stays float16), and three elementwise ops is all a step term costs."""
    return a * ca + b * cb


def dynamic_threshold(ops, x0: Any, ratio: float = 0.995, max_value: float = 1.0) -> Any:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per batch item, s = the `ratio`
    quantile of |x0|, clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s.

    The quantile has no TensorOps op, so x0 makes one host round trip (thresholding is meant for
    pixel-space models and is off by default); the clip and division run on the backend. Lower
    precisions are computed in float32 and cast back, as the reference does."""
    dtype = ops.dtype_name(x0)
    work = x0 if dtype in ("float32", "float64") else ops.cast(x0, "float32")
    host = ops.to_numpy(work)
    batch = host.shape[0]
    s = np.quantile(np.abs(host.reshape(batch, -1)), ratio, axis=1)  # linear interpolation, as torch.quantile
    s = np.minimum(np.maximum(s, 1.0), max_value)  # clamp(min=1, max=max_value); max wins if max < 1
    s = ops.from_numpy(s.astype(host.dtype).reshape((batch,) + (1,) * (host.ndim - 1)), like=work)
    out = ops.clip(work, -s, s) / s
    return out if dtype in ("float32", "float64") else ops.cast(out, dtype)


_CACHE_LIMIT = 4096


def cached(cache: Dict[tuple, Any], key: tuple, compute: Callable[[], Any]) -> Any:
    """`compute()` memoised in `cache` (None: no cache). Step coefficients depend only on the schedule,
    the timesteps and the options in `key`, so a scheduler computes each combination once and later
    steps cost one dict lookup."""
    if cache is None:
        return compute()
    value = cache.get(key)
    if value is None:
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        value = cache[key] = compute()
    return value


def step_options(options: Dict[str, Any], defaults: Dict[str, Any], sampler: str) -> Dict[str, Any]:
    """A stateless step's clip / threshold options: `defaults` (the config's) updated with `options`; a name
    not among the defaults is an error naming the ones there are."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"Unknown {sampler} options {sorted(unknown)}; use {sorted(defaults)}.")
    return {**defaults, **options}
