"""Which backend owns an object, decided in the core; the backends fill the registry.

The core sits below the backends: it never imports `fewstep.backends` (a test reads the import graph).
Yet a scheduler step must find the TensorOps for the tensors it is given. So the backends package
registers, at its import, one entry per backend: the module that implements it, the framework module
it needs, and a predicate telling whether an object belongs to that framework. Like einops'
`_backends.py`, a framework is only *detected* when it is already in `sys.modules`: asking never
imports torch or MindSpore. There is no process-global backend; both frameworks live in one process.

Registering installs nothing: no import hook, no patch of another library. What fewstep adds to a
library (its schedulers as diffusers' or mindone's `SchedulerMixin` subclasses, the MindSpore CPU
stand-ins) is asked for explicitly (`fewstep/backends/scheduler_interop.py`,
`fewstep/backends/mindspore_cpu.py`).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fewstep.core.ops import TensorOps


class BackendNotInstalled(ImportError):
    """The framework a backend needs cannot be imported."""


@dataclass(frozen=True)
class BackendEntry:
    module: str                       # implements the backend; exposes a `Backend` class
    framework: str                    # the framework module it needs (detected in sys.modules only)
    owns: Callable[[Any, Any], bool]  # owns(framework_module, obj): does obj belong to that framework?
    install_hint: str                 # the pip extra that installs it
    # device_anchor(framework_module, device): an empty int64 tensor on `device` when it names a device of
    # this framework, else None. Lets the core place host-planned values (timesteps) where a user asked.
    device_anchor: Optional[Callable[[Any, Any], Any]] = None


_ENTRIES: Dict[str, BackendEntry] = {}
_ALIASES: Dict[str, str] = {}
_INSTANCES: Dict[str, TensorOps] = {}


def register_backend(name: str, entry: BackendEntry, aliases=()) -> None:
    _ENTRIES[name] = entry
    _BY_TYPE.clear()
    for alias in aliases:
        _ALIASES[alias] = name


def available_backends() -> List[str]:
    """Names of the backends whose framework can be imported (tries the import)."""
    names = []
    for name in _ENTRIES:
        try:
            get_backend(name)
        except BackendNotInstalled:
            continue
        names.append(name)
    return names


def _load(name: str) -> TensorOps:
    if name not in _INSTANCES:
        entry = _ENTRIES[name]
        try:
            importlib.import_module(entry.framework)
        except ImportError as err:
            raise BackendNotInstalled(
                f"The {name!r} backend needs {entry.framework}, which is not installed ({err}). "
                f"Install it with `pip install 'fewstep[{entry.install_hint}]' -c constraints.txt`."
            ) from err
        _INSTANCES[name] = importlib.import_module(entry.module).Backend()
    return _INSTANCES[name]


def framework_of(obj: Any) -> str:
    """The framework an object belongs to, or "" if none that fewstep knows. Imports nothing.

    Memoised per type: an object of a framework's type exists only once that framework is imported, so
    a type's answer never changes (and a step asks once or twice per call)."""
    kind = type(obj)
    name = _BY_TYPE.get(kind)
    if name is None:
        name = _BY_TYPE[kind] = _detect(obj)
    return name


_BY_TYPE: Dict[type, str] = {}


def _detect(obj: Any) -> str:
    if isinstance(obj, (np.ndarray, np.generic)):
        return "numpy"
    for name, entry in _ENTRIES.items():
        framework = sys.modules.get(entry.framework)
        if framework is not None and name != "numpy" and entry.owns(framework, obj):
            return name
    return ""


def get_backend(spec: Any) -> TensorOps:
    """The backend for a name, a tensor, a model, or an existing backend object.

    Raises ValueError naming the accepted choices when `spec` is none of those."""
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec.lower())
        if name not in _ENTRIES:
            raise ValueError(f"Unknown backend {spec!r}; choose one of {', '.join(_ENTRIES)}.")
        return _load(name)
    if hasattr(spec, "from_numpy") and isinstance(getattr(spec, "name", None), str):
        return spec
    name = framework_of(spec)
    if not name:
        raise ValueError(
            f"Cannot tell which framework a {type(spec).__name__} belongs to. Pass a NumPy array, a torch "
            f"tensor or module, a MindSpore tensor or Cell, or choose explicitly: backend='torch' or "
            f"backend='mindspore'."
        )
    return _load(name)


def device_anchor(device: Any) -> Any:
    """An empty int64 tensor on `device` from the first loaded framework that knows the device, or None
    (no device given, or no imported framework claims it: the caller keeps NumPy)."""
    if device is None:
        return None
    for entry in _ENTRIES.values():
        framework = sys.modules.get(entry.framework)
        if framework is not None and entry.device_anchor is not None:
            anchor = entry.device_anchor(framework, device)
            if anchor is not None:
                return anchor
    return None


def backend_of(*tensors: Any) -> TensorOps:
    """The one backend that all given tensors (None entries skipped) belong to.

    Mixing frameworks in one call is an error rather than a silent copy between devices."""
    names = {}
    for t in tensors:
        if t is None:
            continue
        names.setdefault(framework_of(t) or type(t).__name__, type(t).__name__)
    if not names:
        raise ValueError("No tensor given: pass NumPy arrays, torch tensors or MindSpore tensors.")
    if len(names) > 1:
        raise ValueError(
            f"Tensors of different frameworks in one call ({', '.join(sorted(names))}); convert them to "
            f"one framework first, e.g. with fewstep.get_backend('torch').from_numpy(array)."
        )
    return get_backend(next(t for t in tensors if t is not None))

