"""Guidance as a part of the loop: classifier-free guidance, or an LCM-distilled UNet's guidance embedding.

A UNet with `time_cond_proj_dim` (LCM-distilled) takes `guidance_scale - 1` as an embedding
(`timestep_cond`) and runs once per step; any other UNet runs twice under classifier-free guidance when
the scale is above 1 (the loop concatenates the latents when `call.do_cfg` is set; `combine` turns the two
halves into one prediction, rescaled by `guidance_rescale` as diffusers' `rescale_noise_cfg` does). diffusers'
LatentConsistencyModel pipelines never run classifier-free guidance (`LCMGuidance`) and take no
`guidance_rescale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fewstep.core import checks
from fewstep.core.guidance import guidance_scale_embedding, rescale_noise_cfg
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part


@dataclass
class _GuidanceState:
    embedding: Any      # the guidance embedding (`timestep_cond`), or None
    rescale: float      # guidance_rescale, checked; 0 leaves the guided prediction as it is


class Guidance(Part):
    """Classifier-free guidance above scale 1, unless the UNet takes a guidance embedding. With
    `embedding=False` (diffusers' ControlNet img2img / inpainting and AnimateDiff video pipelines, which never
    build it) an LCM-distilled UNet runs under classifier-free guidance too and without the embedding."""

    name = "cfg"
    arguments = {"guidance_rescale": 0.0}
    argument_docs = {
        "guidance_rescale": Arg("`float`", "Rescales the classifier-free-guided prediction to the standard deviation "
                                "of the text prediction and mixes it in by this factor (Lin et al., \"Common "
                                "Diffusion Noise Schedules and Sample Steps are Flawed\", sec. 3.4), against "
                                "over-exposure, mostly with zero-terminal-SNR models (0.7 there). Used only while "
                                "classifier-free guidance runs; 0 turns it off."),
    }

    def __init__(self, embedding: bool = True):
        self.embedding = embedding

    def uses_cfg(self, pipe, guidance_scale: float) -> bool:
        return guidance_scale > 1 and (not self.embedding or pipe.unet.config.get("time_cond_proj_dim") is None)

    def check_arguments(self, pipe, args, call):
        call.do_cfg = self.uses_cfg(pipe, call.guidance_scale)
        if "guidance_rescale" in self.arguments:
            rescale = checks.number(args["guidance_rescale"], "guidance_rescale", "Use e.g. 0.7, or 0 to turn it off.")
            if rescale < 0:
                raise ValueError(f"guidance_rescale must be 0 or more; got {rescale}. Use e.g. 0.7, or 0 to turn it off.")

    def prepare(self, pipe, call, args):
        rescale = float(args.get("guidance_rescale", 0.0)) if "guidance_rescale" in self.arguments else 0.0
        dim = pipe.unet.config.get("time_cond_proj_dim")
        if dim is None or not self.embedding:
            return _GuidanceState(None, rescale)
        w = np.full((call.batch,), call.guidance_scale - 1.0)
        embedding = call.ops.from_numpy(guidance_scale_embedding(w, dim), like=call.latents, dtype=call.cond.dtype)
        return _GuidanceState(embedding, rescale)

    def unet_inputs(self, pipe, call, state, step):
        return None if state.embedding is None else {"timestep_cond": state.embedding}

    def combine(self, pipe, call, state, step, noise_pred):
        """diffusers' classifier-free guidance: uncond + scale * (text - uncond), then `rescale_noise_cfg` when
        guidance_rescale > 0."""
        if not call.do_cfg:
            return noise_pred
        uncond, text = call.ops.split(noise_pred, 2, axis=0)
        guided = uncond + call.guidance_scale * (text - uncond)
        if state.rescale > 0.0:
            guided = rescale_noise_cfg(call.ops, guided, text, state.rescale)
        return guided


class LCMGuidance(Guidance):
    """diffusers' LatentConsistencyModel pipelines: the guidance embedding only, never a second UNet pass."""

    name = "lcm"
    default_guidance = 8.5
    # diffusers' LatentConsistencyModel pipelines take no guidance_rescale: there is no guided prediction
    arguments = {}
    argument_docs = {}

    def uses_cfg(self, pipe, guidance_scale: float) -> bool:
        return False
