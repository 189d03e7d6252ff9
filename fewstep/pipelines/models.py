"""Components loaded on their own and passed to a pipeline: `fewstep.ControlNetModel`,
`fewstep.T2IAdapter`, `fewstep.UNet2DConditionModel`.

`from_pretrained` reads a diffusers model folder (config.json + weights) or a hub id with the
backend's trusted library (diffusers on torch, mindone on MindSpore) and returns the fewstep
component that pipelines take (`controlnet=`, `adapter=`, `unet=`); its `.module` is the library's
own model.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from fewstep.backends import get_backend, load_component
from fewstep.pipelines import loading


class _ModelLoader:
    _component: str = ""
    _class_names: Tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        raise TypeError(f"Load a {type(self).__name__} with {type(self).__name__}.from_pretrained(path, backend=...).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backend: str = "torch", dtype: str = "float32",
                        device: Optional[str] = None, variant: Optional[str] = None, subfolder: Optional[str] = None):
        ops = get_backend(backend)  # an unknown backend fails before any file is read
        folder = loading.resolve_folder(pretrained_model_name_or_path, what="a diffusers model folder (with config.json)")
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} has no config.json: it is not a diffusers model folder. For a model inside a "
                             f"pipeline folder pass subfolder= (e.g. subfolder='unet').")
        with open(path) as f:
            class_name = json.load(f).get("_class_name")
        if class_name not in cls._class_names:
            raise ValueError(f"{folder!r} holds a {class_name}, not a {' / '.join(cls._class_names)}; load it with the "
                             f"matching fewstep class.")
        return load_component(ops.name, cls._component, "diffusers", class_name, folder, dtype=dtype, device=device,
                              variant=variant)


class ControlNetModel(_ModelLoader):
    """A ControlNet for `StableDiffusion(XL)ControlNetPipeline(controlnet=...)`."""

    _component = "controlnet"
    _class_names = ("ControlNetModel",)


class T2IAdapter(_ModelLoader):
    """A T2I-Adapter for `StableDiffusion(XL)AdapterPipeline(adapter=...)`."""

    _component = "adapter"
    _class_names = ("T2IAdapter",)


class UNet2DConditionModel(_ModelLoader):
    """A UNet for any pipeline's `unet=`, e.g. an LCM-distilled one (latent-consistency/lcm-sdxl)."""

    _component = "unet"
    _class_names = ("UNet2DConditionModel",)


class MotionAdapter(_ModelLoader):
    """AnimateDiff's motion modules for `AnimateDiffPipeline(motion_adapter=...)`."""

    _component = "motion_adapter"
    _class_names = ("MotionAdapter",)
