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
from typing import Optional

from fewstep.backends import get_backend, load_component
from fewstep.pipelines import loading


class _ModelLoader:
    """Base of the component loaders; a subclass names the pipeline component it loads
    (`class ControlNetModel(_ModelLoader, component="controlnet")`) and reads the diffusers model class of
    its own name."""

    _component: str = ""

    def __init_subclass__(cls, component: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._component = component

    def __init__(self, *args, **kwargs):
        raise TypeError(f"Load a {type(self).__name__} with {type(self).__name__}.from_pretrained(path, backend=...).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backend: str = "torch", dtype=None,
                        device: Optional[str] = None, variant: Optional[str] = None, subfolder: Optional[str] = None,
                        *, torch_dtype=None, mindspore_dtype=None):
        """Load this model from a diffusers model folder with the backend's library; the fewstep component a
        pipeline takes (its `.module` is the library's own model).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A diffusers model folder (config.json and the weights) or a hub repository id, fetched through
                huggingface_hub's cache (offline when the snapshot is already there).
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads with diffusers, "mindspore" with mindone.diffusers; pass the pipeline's backend.
            dtype (`str` or a framework dtype, *optional*):
                The dtype of the weights: "float32" (when no dtype keyword is given), "float16" or "bfloat16"
                (aliases such as "fp16" or "torch.float16", and torch / MindSpore dtype objects, are read too).
            device (`str`, *optional*):
                torch only: the device the model is moved to (e.g. "cuda"); None leaves it on the CPU.
                MindSpore places models by its own context (`mindspore.set_context(device_target=...)`).
            variant (`str`, *optional*):
                The weight files' variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
            subfolder (`str`, *optional*):
                The model's folder inside `pretrained_model_name_or_path`, e.g. "unet" for a pipeline folder's UNet.
            torch_dtype (`torch.dtype`, *optional*):
                diffusers' keyword for `dtype` (`torch_dtype=torch.float16`), read by the dtype's name on either
                backend; a MindSpore dtype here, or keywords naming different dtypes, are refused.
            mindspore_dtype (`mindspore.Type`, *optional*):
                mindone's keyword for `dtype` (`mindspore_dtype=mindspore.float16`), read the same way.

        Returns:
            The component, for a pipeline's `from_pretrained(..., {component}=...)` or `from_pipe`.
        """
        ops = get_backend(backend)  # an unknown backend or dtype fails before any file is read
        dtype = loading.resolve_dtype(dtype, torch_dtype, mindspore_dtype)
        folder = loading.resolve_folder(pretrained_model_name_or_path, what="a diffusers model folder (with config.json)",
                                        variant=variant, subfolder=subfolder)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} has no config.json: it is not a diffusers model folder. For a model inside a "
                             f"pipeline folder pass subfolder= (e.g. subfolder='unet').")
        with open(path) as f:
            class_name = json.load(f).get("_class_name")
        if class_name != cls.__name__:
            raise ValueError(f"{folder!r} holds a {class_name}, not a {cls.__name__}; load it with the "
                             f"matching fewstep class.")
        return load_component(ops.name, cls._component, "diffusers", class_name, folder, dtype=dtype, device=device,
                              variant=variant)


class ControlNetModel(_ModelLoader, component="controlnet"):
    """A ControlNet for `StableDiffusion(XL)ControlNetPipeline(controlnet=...)`."""


class T2IAdapter(_ModelLoader, component="adapter"):
    """A T2I-Adapter for `StableDiffusion(XL)AdapterPipeline(adapter=...)`."""


class UNet2DConditionModel(_ModelLoader, component="unet"):
    """A UNet for any pipeline's `unet=`, e.g. an LCM-distilled one (latent-consistency/lcm-sdxl)."""


class AutoencoderTiny(_ModelLoader, component="vae"):
    """TAESD / TAESDXL (madebyollin/taesd, madebyollin/taesdxl) for any pipeline's `vae=`: real-time previews."""


class MotionAdapter(_ModelLoader, component="motion_adapter"):
    """AnimateDiff's motion modules for `AnimateDiffPipeline(motion_adapter=...)`."""
