"""The pipelines, named as diffusers names them: a conditioning and a task on the shared loop,
plus the extensions (ControlNet, T2I-Adapter) a class lists."""

from fewstep.pipelines.base import DiffusionPipeline
from fewstep.pipelines.conditioning import SDConditioning, SDXLConditioning
from fewstep.pipelines.controlnet import ControlNet
from fewstep.pipelines.lora import LoraMixin
from fewstep.pipelines.t2i_adapter import T2IAdapter
from fewstep.pipelines.tasks import Img2ImgTask, InpaintTask, Text2ImageTask


class StableDiffusionPipeline(Text2ImageTask, SDConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 (and their TCD/LCM LoRAs or LCM-distilled UNets)."""


class StableDiffusionImg2ImgPipeline(Img2ImgTask, SDConditioning, LoraMixin, DiffusionPipeline):
    """Image-to-image for SD 1.5 / 2.1; `strength` (default 0.8) sets how much of the schedule runs."""


class StableDiffusionInpaintPipeline(InpaintTask, SDConditioning, LoraMixin, DiffusionPipeline):
    """Inpainting for SD 1.5 / 2.1, with a 9-channel inpainting UNet or a plain 4-channel one."""


class StableDiffusionXLPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SDXL."""


class StableDiffusionXLImg2ImgPipeline(Img2ImgTask, SDXLConditioning, LoraMixin, DiffusionPipeline):
    """Image-to-image for SDXL; `strength` defaults to 0.3 as in diffusers."""

    _default_strength = 0.3


class StableDiffusionXLInpaintPipeline(InpaintTask, SDXLConditioning, LoraMixin, DiffusionPipeline):
    """Inpainting for SDXL; `strength` defaults to 0.9999 as in diffusers (the TCD guide uses 0.99)."""

    _default_strength = 0.9999


# --- adapters: the same combinations plus an extension ---------------------------------------------
class StableDiffusionControlNetPipeline(Text2ImageTask, SDConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 with one ControlNet or a list (`image=` the control image)."""

    _extensions = (ControlNet("image"),)


class StableDiffusionXLControlNetPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SDXL with one ControlNet or a list (`image=` the control image)."""

    _extensions = (ControlNet("image"),)


class StableDiffusionAdapterPipeline(Text2ImageTask, SDConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 with a T2I-Adapter (`image=` the conditioning image)."""

    _extensions = (T2IAdapter(),)


class StableDiffusionXLAdapterPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, DiffusionPipeline):
    """Text-to-image for SDXL with a T2I-Adapter (`image=` the conditioning image)."""

    _extensions = (T2IAdapter(),)
