"""fewstep: few-step diffusion sampling (TCD, LCM) written once, run on PyTorch or MindSpore.

`import fewstep` imports neither framework; backends load them on first use.
"""

from fewstep.backends import available_backends, backend_of, get_backend
from fewstep.core.random import Generator
from fewstep.core.schedulers.lcm import LCMScheduler
from fewstep.core.schedulers.tcd import TCDScheduler

__version__ = "0.1.0"

# Pipelines, component loaders and AutoPipelines are reached as fewstep.<Name> too (as in diffusers);
# imported on first use so that `import fewstep` stays light.
_PIPELINE_NAMES = ("AnimateDiffPipeline", "MotionAdapter", "AutoPipelineForImage2Image", "AutoPipelineForInpainting", "AutoPipelineForText2Image",
                   "ControlNetModel", "DiffusionPipeline", "T2IAdapter", "UNet2DConditionModel")


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        from fewstep import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")

__all__ = [
    *_PIPELINE_NAMES,
    "Generator",
    "LCMScheduler",
    "TCDScheduler",
    "available_backends",
    "backend_of",
    "get_backend",
]
