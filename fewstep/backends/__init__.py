"""Backend registry: the only package that imports a framework, and only lazily.

`get_backend` resolves a name ("numpy", "torch", "mindspore"), a tensor, or a model to the backend
that handles it. Like einops, a framework is only *detected* if it is already in `sys.modules`:
fewstep never imports torch or MindSpore just to ask whether an object belongs to it.
There is no process-global backend: both frameworks can live in one process.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Dict

import numpy as np

from fewstep.core.ops import TensorOps

# name -> (module that implements it, the framework module whose presence it needs)
_MODULES = {
    "numpy": ("fewstep.backends.numpy_backend", "numpy"),
    "torch": ("fewstep.backends.torch_backend", "torch"),
    "mindspore": ("fewstep.backends.mindspore_backend", "mindspore"),
}
_ALIASES = {"np": "numpy", "pt": "torch", "pytorch": "torch", "ms": "mindspore"}
_INSTANCES: Dict[str, TensorOps] = {}


class BackendNotInstalled(ImportError):
    """The framework a backend needs cannot be imported."""


def available_backends() -> list:
    """Names of the backends whose framework can be imported (tries the import)."""
    names = []
    for name in _MODULES:
        try:
            get_backend(name)
        except BackendNotInstalled:
            continue
        names.append(name)
    return names


def _load(name: str) -> TensorOps:
    if name not in _INSTANCES:
        module_name, framework = _MODULES[name]
        try:
            importlib.import_module(framework)
        except ImportError as err:
            extra = {"torch": "torch", "mindspore": "mindspore"}.get(name, "")
            raise BackendNotInstalled(
                f"The {name!r} backend needs {framework}, which is not installed ({err}). "
                f"Install it with `pip install 'fewstep[{extra}]' -c constraints.txt`."
            ) from err
        _INSTANCES[name] = importlib.import_module(module_name).Backend()
    return _INSTANCES[name]


def _framework_of(obj: Any) -> str:
    """The framework an object belongs to, or "" if none that fewstep knows."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, (torch.Tensor, torch.nn.Module)):
        return "torch"
    ms = sys.modules.get("mindspore")
    if ms is not None and isinstance(obj, (ms.Tensor, ms.nn.Cell)):
        return "mindspore"
    return ""


def get_backend(spec: Any) -> TensorOps:
    """The backend for a name, a tensor, a model, or an existing backend object.

    Raises ValueError naming the accepted choices when `spec` is none of those."""
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec.lower())
        if name not in _MODULES:
            raise ValueError(f"Unknown backend {spec!r}; choose one of {', '.join(_MODULES)}.")
        return _load(name)
    if hasattr(spec, "from_numpy") and hasattr(spec, "name") and isinstance(getattr(spec, "name"), str):
        return spec
    name = _framework_of(spec)
    if not name:
        raise ValueError(
            f"Cannot tell which framework a {type(spec).__name__} belongs to. Pass a NumPy array, a torch "
            f"tensor or module, a MindSpore tensor or Cell, or choose explicitly: backend='torch' or "
            f"backend='mindspore'."
        )
    return _load(name)


def backend_of(*tensors: Any) -> TensorOps:
    """The one backend that all given tensors (None entries skipped) belong to.

    Mixing frameworks in one call is an error rather than a silent copy between devices."""
    names = {}
    for t in tensors:
        if t is None:
            continue
        names.setdefault(_framework_of(t) or type(t).__name__, type(t).__name__)
    if not names:
        raise ValueError("No tensor given: pass NumPy arrays, torch tensors or MindSpore tensors.")
    if len(names) > 1:
        raise ValueError(
            f"Tensors of different frameworks in one call ({', '.join(sorted(names))}); convert them to "
            f"one framework first, e.g. with fewstep.get_backend('torch').from_numpy(array)."
        )
    return get_backend(next(t for t in tensors if t is not None))


def load_component(backend: str, name: str, library: str, class_name: str, folder: str, **kwargs):
    """Load one pipeline component (unet, vae, text_encoder, text_encoder_2) with the backend's
    trusted library (diffusers/transformers on torch, mindone on MindSpore), wrapped in the adapter
    that gives every framework one call signature (`fewstep.pipelines.components`)."""
    ops = get_backend(backend)
    if ops.name == "numpy":
        raise ValueError("The numpy backend runs schedulers only; load models with backend='torch' or 'mindspore'.")
    module = importlib.import_module(f"fewstep.backends.{ops.name}_components")
    return module.load_component(name, library, class_name, folder, **kwargs)


def wrap_component(backend: str, name: str, module):
    """Wrap a model the user loaded with the backend's library (a diffusers ControlNetModel, a mindone
    UNet...) in the adapter `load_component` would give it."""
    ops = get_backend(backend)
    if ops.name == "numpy":
        raise ValueError("The numpy backend runs schedulers only; use backend='torch' or 'mindspore'.")
    return importlib.import_module(f"fewstep.backends.{ops.name}_components").wrap_component(name, module)


def motion_unet(unet, motion_adapter):
    """AnimateDiff's motion UNet from an SD UNet and a motion adapter (fewstep components of one
    backend), built by that backend's library."""
    ops = get_backend(unet.module)
    return importlib.import_module(f"fewstep.backends.{ops.name}_components").motion_unet(unet, motion_adapter)
