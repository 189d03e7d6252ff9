"""AnimateDiff: SD 1.5 with motion modules, on the same loop with a video layout.

The motion adapter is a component; at construction the pipeline asks the backend's library
(diffusers / mindone `UNetMotionModel.from_unet2d`) for the motion UNet, as diffusers'
AnimateDiffPipeline does. Everything else is the video layout (`layouts.VideoLayout`): 5-D latents,
prompt embeddings per frame, frame-by-frame decoding, `.frames`. The loop does not know it is making
a video.
"""

from __future__ import annotations

from fewstep.backends import motion_unet
from fewstep.pipelines.extensions import Extension


class MotionModules(Extension):
    """Checks that the motion adapter fits the UNet; the motion UNet then runs as the pipeline's UNet."""

    components = ("motion_adapter",)

    def check_components(self, pipe) -> None:
        unet, motion = pipe.unet.config, pipe.motion_adapter.config
        if unet.get("addition_embed_type") == "text_time":
            raise ValueError("This motion adapter is for SD 1.5 UNets, but the UNet is SDXL's; use an SD 1.5 base model "
                             "(AnimateDiff SDXL motion adapters are not supported yet).")
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
