"""fewstep's schedulers as diffusers' and mindone's own scheduler classes, built explicitly.

`fewstep.TCDScheduler` and `fewstep.LCMScheduler` live in the framework-free core and derive from no
library's classes, whatever is imported and in whatever order:
`isinstance(fewstep.TCDScheduler(), diffusers.SchedulerMixin)` is always False. Inside a diffusers or
mindone pipeline they run as they are (`pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)`).
Two things of those libraries check the class, though: `from_pretrained(..., scheduler=...)` accepts
only a `SchedulerMixin`, and `save_pretrained` finds a component's save method through it (a
scheduler of another class is left out of the saved folder). For those, ask this module:

    from fewstep.backends.scheduler_interop import diffusers_class, for_diffusers, for_mindone, mindone_class

    DiffusersTCD = diffusers_class(fewstep.TCDScheduler)  # TCDScheduler(fewstep.TCDScheduler, SchedulerMixin, ConfigMixin)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(path, scheduler=DiffusersTCD(timestep_spacing="trailing"))
    pipe.scheduler = for_diffusers(fewstep.LCMScheduler.from_config(pipe.scheduler.config))
    pipe.save_pretrained(out)  # model_index.json: "scheduler": ["diffusers", "LCMScheduler"]

- `diffusers_class(cls)` / `mindone_class(cls)`: a subclass of the fewstep scheduler class `cls` that
  adds that library's `SchedulerMixin` and `ConfigMixin`, with `cls`'s name. Built on first use (that
  imports the library), then cached: every call returns the same class. fewstep's methods come first
  in its MRO (config round trip, `from_pretrained`, `save_pretrained`, the config-attribute fallback),
  so it behaves as `cls`; the mixins add the identity the library checks. It is a subclass of `cls`,
  so `isinstance(s, fewstep.TCDScheduler)` holds for its instances too. Given another library's class
  of this module, the fewstep class under it is used.
- `for_diffusers(scheduler)` / `for_mindone(scheduler)`: that class's instance with the scheduler's
  config and state (timesteps, step and begin index); the scheduler itself is not changed. One that
  already is of that class is returned as it is.

A saved folder names diffusers' class of the same name with diffusers' config (see
`ConsistencyScheduler._saved_as_module`), so it loads without fewstep. Nothing here runs at import:
neither `import fewstep` nor importing diffusers or mindone changes any class.
"""

from __future__ import annotations

import copy
import threading
from typing import Dict, Tuple

import numpy as np

from fewstep.core.schedulers.scheduler import DiscreteScheduler

__all__ = ["diffusers_class", "for_diffusers", "for_mindone", "mindone_class"]

_LIBRARIES = {"diffusers": "torch", "mindone": "mindspore"}  # library -> the fewstep extra that installs it
_CLASSES: Dict[Tuple[str, type], type] = {}
_LOCK = threading.Lock()


def diffusers_class(cls: type) -> type:
    """`cls` (a fewstep scheduler class) with diffusers' `SchedulerMixin` and `ConfigMixin`; cached."""
    return _library_class("diffusers", cls)


def mindone_class(cls: type) -> type:
    """`cls` (a fewstep scheduler class) with mindone.diffusers' `SchedulerMixin` and `ConfigMixin`; cached."""
    return _library_class("mindone", cls)


def for_diffusers(scheduler):
    """`scheduler` (a fewstep scheduler) as an instance of `diffusers_class(type(scheduler))`."""
    return _convert("diffusers", scheduler)


def for_mindone(scheduler):
    """`scheduler` (a fewstep scheduler) as an instance of `mindone_class(type(scheduler))`."""
    return _convert("mindone", scheduler)


def _mixins(library: str) -> tuple:
    try:
        if library == "diffusers":
            from diffusers import ConfigMixin, SchedulerMixin  # the public names (the modules behind them have moved)
        else:
            from mindone.diffusers.configuration_utils import ConfigMixin
            from mindone.diffusers.schedulers.scheduling_utils import SchedulerMixin
    except ImportError as err:
        raise ImportError(f"{library}_class needs {library}, which cannot be imported ({err}); install it with "
                          f"`pip install 'fewstep[{_LIBRARIES[library]}]' -c constraints.txt`.") from err
    return SchedulerMixin, ConfigMixin


def _library_class(library: str, cls: type) -> type:
    if not (isinstance(cls, type) and issubclass(cls, DiscreteScheduler)):
        raise TypeError(f"{library}_class takes a fewstep scheduler class (fewstep.TCDScheduler, fewstep.LCMScheduler), "
                        f"got {cls!r}.")
    if cls._interop_library == library:
        return cls
    base = cls._interop_base or cls  # another library's class: the fewstep class under it
    with _LOCK:  # one class per (library, base), also when two threads ask first at once
        built = _CLASSES.get((library, base))
        if built is None:
            built = _CLASSES[(library, base)] = _build(library, base)
    return built


def _build(library: str, base: type) -> type:
    namespace = {
        "__module__": __name__,
        "__qualname__": f"{library}_class({base.__qualname__})",
        "__doc__": f"{base.__name__} as a {library} scheduler (`fewstep.backends.scheduler_interop`).\n\n"
                   f"{base.__doc__ or ''}",
        "_interop_library": library,  # also keeps it out of the core's `compatibles` (plain classes only)
        "_interop_base": base,
        "__reduce_ex__": _reduce_ex,
    }
    return type(base.__name__, (base, *_mixins(library)), namespace)


def _reduce_ex(self, protocol):
    # pickle and copy rebuild through the library and the fewstep class: the built class has no
    # importable name of its own
    return _rebuild, (self._interop_library, self._interop_base, dict(self.__dict__))


def _rebuild(library: str, base: type, state: dict):
    scheduler = object.__new__(_library_class(library, base))
    scheduler.__dict__.update(state)
    return scheduler


def _convert(library: str, scheduler):
    if not isinstance(scheduler, DiscreteScheduler):
        raise TypeError(f"for_{library} takes a fewstep scheduler (fewstep.TCDScheduler, fewstep.LCMScheduler), got "
                        f"{type(scheduler).__name__!r}; build one with fewstep.TCDScheduler.from_config(scheduler.config).")
    if type(scheduler)._interop_library == library:
        return scheduler
    cls = _library_class(library, type(scheduler))
    # Containers and host arrays are copied so the two objects do not share what a step updates; the
    # config is frozen (its copy is itself), and a framework tensor of timesteps is only ever replaced.
    state = {k: (v.copy() if isinstance(v, np.ndarray) else copy.copy(v) if isinstance(v, (dict, list)) else v)
             for k, v in vars(scheduler).items()}
    return _rebuild(library, cls._interop_base, state)
