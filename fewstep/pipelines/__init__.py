"""Framework-neutral pipelines: written against TensorOps and the component adapters.

The pipeline classes, named as diffusers names them, are made from one table (`table.py`) by
`factory.py`; every one is reachable here as in `diffusers`.
"""

from fewstep.pipelines.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from fewstep.pipelines.base import PipelineOutput
from fewstep.pipelines.factory import CLASSES, DiffusionPipeline
from fewstep.pipelines.models import (AutoencoderTiny, ControlNetModel, MotionAdapter, T2IAdapter,
                                      UNet2DConditionModel)

globals().update(CLASSES)  # StableDiffusionPipeline, ..., one name per row of the table

__all__ = [
    "AutoPipelineForImage2Image",
    "AutoPipelineForInpainting",
    "AutoPipelineForText2Image",
    "AutoencoderTiny",
    "ControlNetModel",
    "DiffusionPipeline",
    "MotionAdapter",
    "PipelineOutput",
    "T2IAdapter",
    "UNet2DConditionModel",
    *sorted(CLASSES),
]
