"""The pipelines, named as diffusers names them: a conditioning and a task on the shared loop,
plus the extensions (ControlNet, T2I-Adapter) a class lists. Every class takes image prompts (IP-Adapter):
an extension that does nothing until `load_ip_adapter` is called. The SD / SDXL text-to-image, img2img,
inpainting and ControlNet classes also load single-file checkpoints (`from_single_file`)."""

from fewstep.pipelines.animatediff import MotionModules, attach_motion_modules
from fewstep.pipelines.base import DiffusionPipeline
from fewstep.pipelines.conditioning import SDConditioning, SDXLConditioning
from fewstep.pipelines.controlnet import ControlNet
from fewstep.pipelines.ip_adapter import IPAdapter, IPAdapterMixin
from fewstep.pipelines.layouts import VideoLayout
from fewstep.pipelines.lora import LoraMixin
from fewstep.pipelines.single_file import FromSingleFileMixin
from fewstep.pipelines.t2i_adapter import T2IAdapter
from fewstep.pipelines.tasks import Img2ImgTask, InpaintTask, Text2ImageTask


class StableDiffusionPipeline(Text2ImageTask, SDConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                              DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 (and their TCD/LCM LoRAs or LCM-distilled UNets)."""

    _extensions = (IPAdapter(),)


class StableDiffusionImg2ImgPipeline(Img2ImgTask, SDConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                     DiffusionPipeline):
    """Image-to-image for SD 1.5 / 2.1; `strength` (default 0.8) sets how much of the schedule runs."""

    _extensions = (IPAdapter(),)


class StableDiffusionInpaintPipeline(InpaintTask, SDConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                     DiffusionPipeline):
    """Inpainting for SD 1.5 / 2.1, with a 9-channel inpainting UNet or a plain 4-channel one."""

    _extensions = (IPAdapter(),)


class StableDiffusionXLPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                DiffusionPipeline):
    """Text-to-image for SDXL."""

    _extensions = (IPAdapter(),)


class StableDiffusionXLImg2ImgPipeline(Img2ImgTask, SDXLConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                       DiffusionPipeline):
    """Image-to-image for SDXL; `strength` defaults to 0.3 as in diffusers."""

    _default_strength = 0.3
    _extensions = (IPAdapter(),)


class StableDiffusionXLInpaintPipeline(InpaintTask, SDXLConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                       DiffusionPipeline):
    """Inpainting for SDXL; `strength` defaults to 0.9999 as in diffusers (the TCD guide uses 0.99)."""

    _default_strength = 0.9999
    _extensions = (IPAdapter(),)


# --- adapters: the same combinations plus an extension ---------------------------------------------
class StableDiffusionControlNetPipeline(Text2ImageTask, SDConditioning, LoraMixin, IPAdapterMixin, FromSingleFileMixin,
                                        DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 with one ControlNet or a list (`image=` the control image)."""

    _extensions = (ControlNet("image"), IPAdapter())


class StableDiffusionXLControlNetPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, IPAdapterMixin,
                                          FromSingleFileMixin, DiffusionPipeline):
    """Text-to-image for SDXL with one ControlNet or a list (`image=` the control image)."""

    _extensions = (ControlNet("image"), IPAdapter())


class StableDiffusionAdapterPipeline(Text2ImageTask, SDConditioning, LoraMixin, IPAdapterMixin, DiffusionPipeline):
    """Text-to-image for SD 1.5 / 2.1 with a T2I-Adapter (`image=` the conditioning image)."""

    _extensions = (T2IAdapter(), IPAdapter())


class StableDiffusionXLAdapterPipeline(Text2ImageTask, SDXLConditioning, LoraMixin, IPAdapterMixin, DiffusionPipeline):
    """Text-to-image for SDXL with a T2I-Adapter (`image=` the conditioning image)."""

    _extensions = (T2IAdapter(), IPAdapter())


class AnimateDiffPipeline(Text2ImageTask, SDConditioning, LoraMixin, IPAdapterMixin, DiffusionPipeline):
    """Text-to-video for SD 1.5 with a motion adapter (`motion_adapter=`): `num_frames`,
    `decode_chunk_size`, output `.frames`."""

    _extensions = (MotionModules(), IPAdapter())
    _layout = VideoLayout()

    def __init__(self, backend, scheduler, **components):
        super().__init__(backend, scheduler, **components)
        attach_motion_modules(self)
