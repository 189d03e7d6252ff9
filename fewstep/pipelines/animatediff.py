"""AnimateDiff: SD 1.5 or SDXL with motion modules, on the same loop with a video layout.

The motion adapter is a component; at construction the pipeline asks the backend's library
(diffusers / mindone `UNetMotionModel.from_unet2d`) for the motion UNet, as diffusers'
AnimateDiffPipeline does. Everything else is the video layout (`layouts.VideoLayout`): 5-D latents,
prompt embeddings per frame, frame-by-frame decoding, `.frames`. The loop does not know it is making
a video.
"""

from __future__ import annotations

from fewstep.backends import motion_unet
from fewstep.pipelines.parts import Part


class MotionModules(Part):
    """Checks that the motion adapter fits the UNet; the motion UNet then runs as the pipeline's UNet."""

    name = "motion_adapter"
    components = ("motion_adapter",)

    def attach(self, pipe) -> None:
        attach_motion_modules(pipe)

    def check_components(self, pipe) -> None:
        unet, motion = pipe.unet.config, pipe.motion_adapter.config
        xl_unet, xl_pipeline = unet.get("addition_embed_type") == "text_time", "text_encoder_2" in pipe.component_names()
        if xl_unet != xl_pipeline:
            raise ValueError(f"{type(pipe).__name__} is for {'SDXL' if xl_pipeline else 'SD 1.5'} but the UNet is "
                             f"{'SDXL' if xl_unet else 'SD'}'s; use "
                             f"{'AnimateDiffSDXLPipeline' if xl_unet else 'AnimateDiffPipeline'} with a motion adapter "
                             f"made for that base model.")
        mine, theirs = list(motion["block_out_channels"]), list(unet["block_out_channels"])
        if mine != theirs:
            raise ValueError(f"The motion adapter does not fit the UNet: its block_out_channels are {mine}, the UNet's "
                             f"{theirs}. Use a motion adapter made for this base model.")
        per_block = motion.get("motion_layers_per_block")
        layers = unet.get("layers_per_block")
        if per_block is not None and layers is not None and int(per_block) != int(layers):
            raise ValueError(f"The motion adapter has {per_block} motion layers per block but the UNet has {layers} "
                             f"layers per block; use a motion adapter made for this base model.")


def attach_motion_modules(pipe) -> None:
    """Replace an SD UNet by the motion UNet built from it (a UNet that already has motion modules,
    loaded from an AnimateDiff folder, is kept)."""
    if "motion_max_seq_length" not in pipe.unet.config:
        pipe.unet = motion_unet(pipe.unet, pipe.motion_adapter)
