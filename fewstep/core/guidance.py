"""The guidance-scale embedding of guidance-distilled LCM UNets (LCM paper §4.2, after VDM's timestep
embedding): the UNet takes w as a sinusoidal `timestep_cond` instead of running classifier-free
guidance, so one forward pass per step suffices.

The caller passes w = guidance_scale - 1: diffusers' guidance_scale follows Imagen's convention
(1 = no guidance) while LCM was distilled with w in the LCM-paper convention (reference §9.1).

`rescale_noise_cfg` is diffusers' `guidance_rescale` of the classifier-free-guided prediction.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from fewstep.core.ops import check_dtype


def guidance_scale_embedding(
    w: Union[float, Sequence[float], np.ndarray], embedding_dim: int = 512, dtype: str = "float32"
) -> np.ndarray:
    """Sinusoidal embedding of 1000 * w, shape (len(w), embedding_dim): [sin(1000 w f_k), cos(1000 w f_k)]
    with frequencies f_k = 10000^(-k / (half - 1)), k < half = embedding_dim // 2, and one zero column
    appended when embedding_dim is odd.

    Every product is rounded in `dtype` in the order diffusers' `get_guidance_scale_embedding` rounds it
    (the argument 1000 w f_k reaches ~1e4, so one ulp of f_k moves sin by ~1e-3: the frequencies and
    products must be the same float32 numbers). exp/sin/cos are evaluated in float64 and rounded once,
    within an ulp or two of torch's float32 kernels. float16/bfloat16 are computed in float32 and cast."""
    dtype = check_dtype(dtype)
    w = np.atleast_1d(np.asarray(w, dtype=np.float64))
    if w.ndim != 1:
        raise ValueError(f"w must be a number or a 1-D sequence (one value per batch item), got shape {w.shape}.")
    embedding_dim = int(embedding_dim)
    half = embedding_dim // 2
    if half < 2:
        raise ValueError(f"embedding_dim must be at least 4, got {embedding_dim}.")
    work = np.float64 if dtype == "float64" else np.float32

    w_scaled = (w.astype(np.float32) * np.float32(1000.0)).astype(work)  # the pipeline's float32 w tensor * 1000
    # log(10000) / (half - 1) is a float32 scalar in the reference whatever `dtype` is.
    step = np.float32(np.log(np.float64(10000.0))) / np.float32(half - 1)
    exponents = np.arange(half, dtype=work) * work(-step)
    freqs = np.exp(exponents.astype(np.float64)).astype(work)
    args = w_scaled[:, None] * freqs[None, :]
    args64 = args.astype(np.float64)
    emb = np.concatenate([np.sin(args64), np.cos(args64)], axis=1).astype(work)
    if embedding_dim % 2 == 1:
        emb = np.concatenate([emb, np.zeros((len(w), 1), dtype=work)], axis=1)
    if dtype in ("float32", "float64"):
        return emb
    if dtype == "bfloat16":
        raise ValueError("NumPy has no bfloat16; compute with dtype='float32' and cast on the framework.")
    return emb.astype(np.dtype(dtype))


def rescale_noise_cfg(ops, noise_cfg, noise_pred_text, guidance_rescale: float):
    """diffusers' `rescale_noise_cfg` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", sec. 3.4), against TensorOps: the guided prediction scaled to the per-image standard deviation of
    the text prediction (over all axes but the batch, n - 1 divisor, as torch's `std`), then mixed with the
    unscaled one by `guidance_rescale`. The arithmetic is diffusers', in its order; everything stays on the
    device (`guidance_rescale` is a Python float)."""
    axes = tuple(range(1, len(ops.shape(noise_cfg))))
    std_text = ops.std(noise_pred_text, axes)
    std_cfg = ops.std(noise_cfg, axes)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg
