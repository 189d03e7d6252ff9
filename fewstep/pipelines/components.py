"""The call signatures every backend's model adapters give the pipelines.

Models stay the ones users trust (diffusers/transformers on torch, mindone on MindSpore); a backend
wraps each in a small adapter so the pipelines call one signature whatever the framework. Inputs
and outputs are that backend's tensors; Python ints and floats stay Python.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Tuple

import numpy as np

Tensor = Any


class UNet(Protocol):
    module: Any            # the framework's own model object (diffusers / mindone)
    config: Mapping        # the model's config as a plain mapping
    dtype: str             # dtype name of the weights

    def __call__(self, sample: Tensor, timestep: int, encoder_hidden_states: Tensor,
                 timestep_cond: Optional[Tensor] = None, added_cond: Optional[Mapping[str, Tensor]] = None,
                 cross_attention_kwargs: Optional[Mapping] = None) -> Tensor:
        """The noise (or v / sample) prediction for `sample` at `timestep`."""


class VAE(Protocol):
    module: Any
    config: Mapping
    dtype: str
    scale_factor: int      # pixels per latent pixel, 2 ** (len(block_out_channels) - 1)

    def encode(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """(mean, std) of the latent posterior for an NCHW image in [-1, 1]. Sampling happens in the
        pipeline, so the noise comes from the user's generator in the pipeline's order."""

    def decode(self, latents: Tensor) -> Tensor:
        """An NCHW image in about [-1, 1] from unscaled latents, in float32 when the VAE needs the
        fp16 upcast that diffusers applies (config `force_upcast`)."""


class TextEncoder(Protocol):
    module: Any
    config: Mapping
    dtype: str

    def __call__(self, input_ids: np.ndarray) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(last_hidden_state, penultimate hidden state, projected pooled embedding or None)
        for token ids given as an int64 NumPy array of shape (batch, length)."""
