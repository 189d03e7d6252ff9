"""Framework-neutral pipelines: written against TensorOps and the component adapters."""

from fewstep.pipelines.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from fewstep.pipelines.base import DiffusionPipeline, PipelineOutput
from fewstep.pipelines.models import ControlNetModel, MotionAdapter, T2IAdapter, UNet2DConditionModel
from fewstep.pipelines.stable_diffusion import (
    AnimateDiffPipeline,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLAdapterPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

__all__ = [
    "AnimateDiffPipeline",
    "MotionAdapter",
    "AutoPipelineForImage2Image",
    "AutoPipelineForInpainting",
    "AutoPipelineForText2Image",
    "ControlNetModel",
    "DiffusionPipeline",
    "PipelineOutput",
    "StableDiffusionAdapterPipeline",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionXLAdapterPipeline",
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
    "T2IAdapter",
    "UNet2DConditionModel",
]
