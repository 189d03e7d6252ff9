"""Guidance as a part of the loop: classifier-free guidance, or an LCM-distilled UNet's guidance embedding.

A UNet with `time_cond_proj_dim` (LCM-distilled) takes `guidance_scale - 1` as an embedding
(`timestep_cond`) and runs once per step; any other UNet runs twice under classifier-free guidance when
the scale is above 1 (the loop concatenates and combines the halves when `call.do_cfg` is set). diffusers'
LatentConsistencyModel pipelines never run classifier-free guidance (`LCMGuidance`).
"""

from __future__ import annotations

import numpy as np

from fewstep.core.guidance import guidance_scale_embedding
from fewstep.pipelines.parts import Part


class Guidance(Part):
    """Classifier-free guidance above scale 1, unless the UNet takes a guidance embedding. With
    `embedding=False` (diffusers' ControlNet img2img / inpainting and AnimateDiff video pipelines, which never
    build it) an LCM-distilled UNet runs under classifier-free guidance too and without the embedding."""

    name = "cfg"

    def __init__(self, embedding: bool = True):
        self.embedding = embedding

    def uses_cfg(self, pipe, guidance_scale: float) -> bool:
        return guidance_scale > 1 and (not self.embedding or pipe.unet.config.get("time_cond_proj_dim") is None)

    def check_arguments(self, pipe, args, call):
        call.do_cfg = self.uses_cfg(pipe, call.guidance_scale)

    def prepare(self, pipe, call, args):
        dim = pipe.unet.config.get("time_cond_proj_dim")
        if dim is None or not self.embedding:
            return None
        w = np.full((call.batch,), call.guidance_scale - 1.0)
        return call.ops.from_numpy(guidance_scale_embedding(w, dim), like=call.latents, dtype=call.cond.dtype)

    def unet_inputs(self, pipe, call, state, step):
        return None if state is None else {"timestep_cond": state}


class LCMGuidance(Guidance):
    """diffusers' LatentConsistencyModel pipelines: the guidance embedding only, never a second UNet pass."""

    name = "lcm"
    default_guidance = 8.5

    def uses_cfg(self, pipe, guidance_scale: float) -> bool:
        return False
