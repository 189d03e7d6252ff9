"""The one table of fewstep's pipeline classes: (family, task, layout, adapters) -> diffusers' name.

`factory.py` makes a class of each row, with the row's key stored on it (`cls._key`), and every lookup
(`DiffusionPipeline.from_pretrained` on a folder, the AutoPipelines, `from_single_file`, the CLI) reads
this table through the factory. A family is "sd" (SD 1.x / 2.x), "sdxl", or "lcm" (diffusers'
LatentConsistencyModel pipelines: SD's text encoder, LCM's guidance and timesteps; a task the lcm rows
lack falls back to SD's). A task is "text2img", "img2img", "inpaint" or "video2video"; a layout "image"
or "video". Adapters are parts (ControlNet, T2I-Adapter, motion modules) with the arguments of that
class: diffusers names the control image `image` in text-to-image pipelines and `control_image` where
`image` is the picture to start from, and gives `controlnet_conditioning_scale` its own default per
class. Every class also takes the LoRA scale and image prompts (IP-Adapter).

Adding an adapter: a part in its own file (see parts.py) and a row here per class it makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from fewstep.pipelines.animatediff import MotionModules
from fewstep.pipelines.controlnet import ControlNet
from fewstep.pipelines.parts import Part
from fewstep.pipelines.t2i_adapter import T2IAdapter


@dataclass(frozen=True)
class Row:
    name: str                           # diffusers' class name
    family: str                         # "sd", "sdxl" or "lcm"
    task: str                           # "text2img", "img2img", "inpaint" or "video2video"
    adapters: Tuple[Part, ...] = ()
    layout: str = "image"
    single_file: bool = False           # has `from_single_file` (diffusers' FromSingleFileMixin)
    strength: Optional[float] = None    # diffusers' default strength when it is not the task's
    guidance: str = "cfg"               # "cfg": the UNet's guidance embedding when it has one, else CFG;
    #                                     "cfg-only": diffusers' classes that never build the embedding
    doc: str = ""


TABLE: Tuple[Row, ...] = (
    Row("StableDiffusionPipeline", "sd", "text2img", single_file=True,
        doc="Text-to-image for SD 1.5 / 2.1 (and their TCD/LCM LoRAs or LCM-distilled UNets)."),
    Row("StableDiffusionImg2ImgPipeline", "sd", "img2img", single_file=True,
        doc="Image-to-image for SD 1.5 / 2.1; `strength` (default 0.8) sets how much of the schedule runs."),
    Row("StableDiffusionInpaintPipeline", "sd", "inpaint", single_file=True,
        doc="Inpainting for SD 1.5 / 2.1, with a 9-channel inpainting UNet or a plain 4-channel one."),
    Row("StableDiffusionXLPipeline", "sdxl", "text2img", single_file=True, doc="Text-to-image for SDXL."),
    Row("StableDiffusionXLImg2ImgPipeline", "sdxl", "img2img", single_file=True, strength=0.3,
        doc="Image-to-image for SDXL; `strength` defaults to 0.3 as in diffusers."),
    Row("StableDiffusionXLInpaintPipeline", "sdxl", "inpaint", single_file=True, strength=0.9999,
        doc="Inpainting for SDXL; `strength` defaults to 0.9999 as in diffusers (the TCD guide uses 0.99)."),
    # ControlNet: one or a list (diffusers' MultiControlNet)
    Row("StableDiffusionControlNetPipeline", "sd", "text2img", (ControlNet("image"),), single_file=True,
        doc="Text-to-image for SD 1.5 / 2.1 with one ControlNet or a list (`image=` the control image)."),
    Row("StableDiffusionXLControlNetPipeline", "sdxl", "text2img", (ControlNet("image"),), single_file=True,
        doc="Text-to-image for SDXL with one ControlNet or a list (`image=` the control image)."),
    Row("StableDiffusionControlNetImg2ImgPipeline", "sd", "img2img", (ControlNet("control_image", 0.8),),
        single_file=True, guidance="cfg-only",
        doc="Image-to-image for SD 1.5 / 2.1 with one ControlNet or a list (`control_image=`)."),
    Row("StableDiffusionControlNetInpaintPipeline", "sd", "inpaint", (ControlNet("control_image"),),
        single_file=True, guidance="cfg-only",
        doc="Inpainting for SD 1.5 / 2.1 with one ControlNet or a list (`control_image=`)."),
    Row("StableDiffusionXLControlNetImg2ImgPipeline", "sdxl", "img2img", (ControlNet("control_image", 0.8),),
        single_file=True, strength=0.8, guidance="cfg-only",
        doc="Image-to-image for SDXL with one ControlNet or a list (`control_image=`); `strength` defaults to 0.8."),
    Row("StableDiffusionXLControlNetInpaintPipeline", "sdxl", "inpaint", (ControlNet("control_image"),),
        single_file=True, strength=0.9999, guidance="cfg-only",
        doc="Inpainting for SDXL with one ControlNet or a list (`control_image=`)."),
    # T2I-Adapter: one, or several (`MultiAdapter`)
    Row("StableDiffusionAdapterPipeline", "sd", "text2img", (T2IAdapter(),),
        doc="Text-to-image for SD 1.5 / 2.1 with a T2I-Adapter or a MultiAdapter (`image=` the conditioning image)."),
    Row("StableDiffusionXLAdapterPipeline", "sdxl", "text2img", (T2IAdapter(),),
        doc="Text-to-image for SDXL with a T2I-Adapter or a MultiAdapter (`image=` the conditioning image)."),
    # AnimateDiff: SD with motion modules, on the video layout
    Row("AnimateDiffPipeline", "sd", "text2img", (MotionModules(),), layout="video",
        doc="Text-to-video for SD 1.5 with a motion adapter (`motion_adapter=`): `num_frames`, `decode_chunk_size`, "
            "output `.frames`."),
    Row("AnimateDiffControlNetPipeline", "sd", "text2img", (MotionModules(), ControlNet("conditioning_frames",
                                                                                      per_frame=True)),
        layout="video", guidance="cfg-only",
        doc="Text-to-video for SD 1.5 with a motion adapter and one ControlNet or a list, conditioned frame by frame "
            "(`conditioning_frames=`)."),
    Row("AnimateDiffVideoToVideoPipeline", "sd", "video2video", (MotionModules(),), layout="video", strength=0.8,
        guidance="cfg-only",
        doc="Video-to-video for SD 1.5 with a motion adapter: `video=` (a list of frames) is encoded, noised to "
            "`strength` and denoised."),
    Row("AnimateDiffSDXLPipeline", "sdxl", "text2img", (MotionModules(),), layout="video",
        doc="Text-to-video for SDXL with an SDXL motion adapter (`motion_adapter=`); output `.frames`."),
    # diffusers' LatentConsistencyModel pipelines (SimianLuo/LCM_Dreamshaper_v7 folders name them)
    Row("LatentConsistencyModelPipeline", "lcm", "text2img",
        doc="Text-to-image for an LCM-distilled SD UNet, as diffusers' LatentConsistencyModelPipeline: the "
            "guidance embedding only (never classifier-free guidance), `original_inference_steps`."),
    Row("LatentConsistencyModelImg2ImgPipeline", "lcm", "img2img",
        doc="Image-to-image for an LCM-distilled SD UNet, as diffusers' LatentConsistencyModelImg2ImgPipeline: "
            "`strength` is passed to the scheduler's `set_timesteps`."),
)
