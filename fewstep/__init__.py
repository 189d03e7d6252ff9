"""fewstep: few-step diffusion sampling (TCD, LCM, DDIM, Euler, Euler-ancestral) written once, run on PyTorch or MindSpore.

`import fewstep` imports neither framework; backends load them on first use.
"""

from fewstep.backends import available_backends, backend_of, get_backend
from fewstep.core.random import Generator
from fewstep.core.schedulers.ddim import DDIMScheduler
from fewstep.core.schedulers.euler import EulerDiscreteScheduler
from fewstep.core.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from fewstep.core.schedulers.lcm import LCMScheduler
from fewstep.core.schedulers.tcd import TCDScheduler

__version__ = "0.1.0"

# Pipelines (every class of fewstep/pipelines/table.py), component loaders, AutoPipelines and `utils` are
# reached as fewstep.<Name> too (as in diffusers); imported on first use so that `import fewstep` stays light.
def __getattr__(name):
    if name in ("utils", "recipes"):
        import importlib

        return importlib.import_module(f"fewstep.{name}")
    if name[:1].isupper() and not name.startswith("_"):
        from fewstep import pipelines

        if name in pipelines.__all__:
            return getattr(pipelines, name)
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")


def __dir__():
    from fewstep.pipelines.table import TABLE

    return sorted(set(globals()) | {row.name for row in TABLE} | {"utils", "recipes"})


__all__ = [
    "DDIMScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "Generator",
    "LCMScheduler",
    "TCDScheduler",
    "available_backends",
    "backend_of",
    "get_backend",
]
