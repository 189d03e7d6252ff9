"""fewstep: few-step diffusion sampling (TCD, LCM) written once, run on PyTorch or MindSpore.

`import fewstep` imports neither framework; backends load them on first use.
"""

from fewstep.backends import available_backends, backend_of, get_backend
from fewstep.core.random import Generator
from fewstep.core.schedulers.lcm import LCMScheduler
from fewstep.core.schedulers.tcd import TCDScheduler

__version__ = "0.1.0"

__all__ = [
    "Generator",
    "LCMScheduler",
    "TCDScheduler",
    "available_backends",
    "backend_of",
    "get_backend",
]
