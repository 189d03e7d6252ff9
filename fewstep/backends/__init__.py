"""The backends: the only package that imports a framework, and only lazily.

It fills the core's registry (`fewstep.core.registry`): which module implements each backend and how
to tell that an object belongs to its framework. `get_backend` / `backend_of` live in the core and
are re-exported here. Loading components goes through the backend's trusted library.

Importing this package registers the backends and nothing else: no import hook, no patch. fewstep's
schedulers as diffusers' / mindone's own classes are built on request (`scheduler_interop`); the
MindSpore CPU stand-ins are installed when the MindSpore backend is created and can be removed
(`mindspore_cpu.uninstall`, `mindspore_cpu.cpu_kernels()`).
"""

from __future__ import annotations

import importlib

from fewstep.core.registry import (BackendEntry, BackendNotInstalled, available_backends, backend_of,
                                   framework_of, get_backend, register_backend)

__all__ = ["BackendNotInstalled", "available_backends", "backend_of", "framework_of", "get_backend",
           "load_component", "motion_unet", "wrap_component"]


def _owns_torch(torch, obj) -> bool:
    return isinstance(obj, (torch.Tensor, torch.nn.Module))


def _owns_mindspore(ms, obj) -> bool:
    return isinstance(obj, (ms.Tensor, ms.nn.Cell))


def _torch_device_anchor(torch, device):
    # A torch.device, or a string torch parses as one ("cpu", "cuda:0", "mps"); anything else is not torch's.
    if not isinstance(device, (str, torch.device)):
        return None
    try:
        return torch.empty(0, dtype=torch.int64, device=torch.device(device))
    except (RuntimeError, TypeError, ValueError):
        return None


register_backend("numpy", BackendEntry("fewstep.backends.numpy_backend", "numpy", lambda np, obj: False, ""),
                 aliases=("np",))
register_backend("torch", BackendEntry("fewstep.backends.torch_backend", "torch", _owns_torch, "torch",
                                       _torch_device_anchor),
                 aliases=("pt", "pytorch"))
register_backend("mindspore", BackendEntry("fewstep.backends.mindspore_backend", "mindspore", _owns_mindspore,
                                           "mindspore"), aliases=("ms",))


def load_component(backend: str, name: str, library: str, class_name: str, folder: str, **kwargs):
    """Load one pipeline component (unet, vae, text_encoder, text_encoder_2) with the backend's
    trusted library (diffusers/transformers on torch, mindone on MindSpore), wrapped in the adapter
    that gives every framework one call signature (`fewstep.backends.components_common`)."""
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
