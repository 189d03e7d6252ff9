"""The two sides of a comparison: a pipeline (fewstep's on either backend, diffusers' on torch, mindone's
on MindSpore) and how to run it so that both draw the same numbers.

Both sides get the same initial latents, drawn once on the host, and a generator of the same seed for
the per-step noise, each of the kind its library honours: `fewstep.Generator` for fewstep, a CPU
`torch.Generator` for diffusers (the same stream as fewstep.Generator's default), an
`np.random.Generator(PCG64)` for mindone (then fewstep draws with `stream="numpy"`, the same numbers).

diffusers, mindone and the frameworks are imported lazily, inside the functions that load or run a
reference library's pipeline (this module is importable without them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

import fewstep
from fewstep.backends import framework_of, get_backend
from fewstep.pipelines import DiffusionPipeline
from fewstep.backends.hooks import first_parameter
from fewstep.parity.recording import framework_model

LIBRARIES = ("fewstep", "diffusers", "mindone")
SCHEDULERS = ("tcd", "lcm")


@dataclass
class Side:
    """One side: a loaded pipeline and a label for the report."""

    pipe: Any
    label: str = ""

    def __post_init__(self):
        if not self.label:
            self.label = f"{self.library}/{self.framework}/{self.dtype}"

    @property
    def library(self) -> str:
        if isinstance(self.pipe, DiffusionPipeline):
            return "fewstep"
        return "mindone" if type(self.pipe).__module__.startswith("mindone") else "diffusers"

    @property
    def starts_from_image(self) -> bool:
        """An img2img or inpainting pipeline (named so by fewstep, diffusers and mindone alike): its
        latents start from the encoded image, not from initial noise passed in."""
        name = type(self.pipe).__name__
        return "Img2Img" in name or "Inpaint" in name

    @property
    def unet_module(self):
        return framework_model(self.pipe.unet)

    @property
    def framework(self) -> str:
        return framework_of(self.unet_module)

    @property
    def dtype(self) -> str:
        return get_backend(self.framework).dtype_name(first_parameter(self.unet_module))

    @property
    def device(self) -> str:
        param = first_parameter(self.unet_module)
        if self.framework == "torch":
            return str(param.device)
        import mindspore  # lazily: only a MindSpore side asks

        return str(mindspore.get_context("device_target"))

    def describe(self) -> Dict[str, Any]:
        return {"label": self.label, "library": self.library, "backend": self.framework, "dtype": self.dtype,
                "device": self.device, "model": str(getattr(self.pipe, "name_or_path", "") or "")}

    def latent_shape(self, batch: int, height: int, width: int) -> tuple:
        factor = int(self.pipe.vae_scale_factor)
        channels = int(_config(framework_model(self.pipe.vae))["latent_channels"])
        return (batch, channels, height // factor, width // factor)

    def default_size(self) -> tuple:
        size = int(_config(self.unet_module)["sample_size"]) * int(self.pipe.vae_scale_factor)
        return size, size

    def run(self, call_kwargs: Dict[str, Any], latents: Optional[np.ndarray], seed: int, stream: str) -> np.ndarray:
        """One call with the given initial latents (None: the pipeline draws them) and a fresh generator of
        `seed`; the images as NHWC floats in [0, 1]."""
        kwargs = dict(call_kwargs, output_type="np")
        if latents is not None:
            ops = get_backend(self.framework)
            kwargs["latents"] = ops.from_numpy(latents, like=first_parameter(self.unet_module))
        if self.library == "fewstep":
            kwargs["generator"] = fewstep.Generator(seed, stream=stream)
        elif self.library == "diffusers":
            import torch  # lazily: only a diffusers side needs a torch.Generator

            kwargs["generator"] = torch.Generator().manual_seed(seed)
        else:
            kwargs["generator"] = np.random.Generator(np.random.PCG64(seed))
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        out = self.pipe(**kwargs)
        images = out.images if hasattr(out, "images") else out[0]
        return np.asarray(images, dtype=np.float32)


def _config(module) -> Dict[str, Any]:
    config = module.config
    return dict(config) if hasattr(config, "keys") else vars(config)


def _encoders(model: str, library: str, native_dtype) -> Dict[str, Any]:
    """The folder's transformers models (text and image encoders), loaded by `library` (transformers or
    mindone.transformers) with `dtype=`. diffusers' and mindone's pipeline loaders hand every component
    their own keyword (torch_dtype / mindspore_dtype), which transformers 4.56+ and mindone.transformers warn
    is deprecated; passing these in loaded the new way keeps the reference side quiet, with the same weights."""
    import importlib
    import os

    from fewstep.pipelines import loading

    folder = loading.resolve_folder(model)
    module = importlib.import_module(library)
    found = {}
    for name, spec in loading.read_model_index(folder).items():
        if not (isinstance(spec, list) and spec[0] == "transformers" and os.path.isdir(os.path.join(folder, name))):
            continue
        cls = getattr(module, spec[1], None)
        if isinstance(cls, type) and issubclass(cls, module.PreTrainedModel):  # not tokenizers, processors
            found[name] = cls.from_pretrained(os.path.join(folder, name), dtype=native_dtype)
    return found


TASKS = {"text2image": "AutoPipelineForText2Image", "img2img": "AutoPipelineForImage2Image",
         "inpaint": "AutoPipelineForInpainting"}


# parity's task names for auto.py's
_AUTO_TASKS = {"text2image": "text2img", "img2img": "img2img", "inpaint": "inpaint"}


def load_side(model: str, library: str = "fewstep", backend: Optional[str] = None, dtype: str = "float32",
              device: Optional[str] = None, scheduler: str = "tcd", label: str = "", task: str = "text2image",
              config: Optional[str] = None) -> Side:
    """A side from a model folder, hub id or single-file checkpoint: fewstep's pipeline on `backend` (default
    torch), diffusers' pipeline (torch), or mindone's (MindSpore), for `task` ("text2image", "img2img",
    "inpaint"), with the TCD or LCM scheduler of that library. A `.safetensors` checkpoint is loaded with each
    library's own `from_single_file` and `config` (a diffusers-format folder of its family, as
    `from_single_file` takes it)."""
    import os

    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {', '.join(TASKS)}.")
    if library not in LIBRARIES:
        raise ValueError(f"Unknown library {library!r}; use one of {', '.join(LIBRARIES)}.")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {scheduler!r}; use 'tcd' or 'lcm'.")
    if library == "diffusers" and backend not in (None, "torch"):
        raise ValueError("diffusers runs on torch; use library='mindone' for MindSpore.")
    if library == "mindone" and backend not in (None, "mindspore"):
        raise ValueError("mindone runs on MindSpore; use library='diffusers' for torch.")
    single_file = os.path.isfile(model)
    if config is not None and not single_file:
        raise ValueError(f"config= describes a single-file checkpoint; {model!r} is not a file: pass the checkpoint, or "
                         f"no config with a pipeline folder.")
    name = {"tcd": "TCDScheduler", "lcm": "LCMScheduler"}[scheduler]
    if library == "fewstep":
        auto = getattr(fewstep, TASKS[task])
        if single_file:
            pipe = auto.from_single_file(model, backend=backend or "torch", dtype=dtype, device=device, config=config)
        else:
            pipe = auto.from_pretrained(model, backend=backend or "torch", dtype=dtype, device=device)
        pipe.scheduler = getattr(fewstep, name).from_config(pipe.scheduler.config)
    elif single_file:
        pipe = _library_single_file(model, library, dtype, device, task, config)
        schedulers = importlib.import_module("diffusers" if library == "diffusers" else "mindone.diffusers.schedulers")
        pipe.scheduler = getattr(schedulers, name).from_config(pipe.scheduler.config)
    elif library == "diffusers":
        import diffusers  # lazily: the reference library of the torch side
        import torch

        native = getattr(torch, dtype)
        encoders = _encoders(model, "transformers", native)
        pipe = getattr(diffusers, TASKS[task]).from_pretrained(model, torch_dtype=native, **encoders)
        if device:
            pipe = pipe.to(device)
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    else:
        from fewstep.backends.mindspore_cpu import complete_mindone_exports, install_cpu_kernels

        install_cpu_kernels()  # before mindone's models are imported: they bind mint ops at import time
        complete_mindone_exports()  # mindone 0.5 leaves TCDScheduler out of its top level (off CPU too)
        import mindspore  # lazily: the reference library of the MindSpore side
        import mindone.diffusers as md
        from mindone.diffusers import schedulers

        native = getattr(mindspore, dtype)
        encoders = _encoders(model, "mindone.transformers", native)
        pipe = getattr(md, TASKS[task]).from_pretrained(model, mindspore_dtype=native, **encoders)
        pipe.scheduler = getattr(schedulers, name).from_config(pipe.scheduler.config)
    return Side(pipe, label)


def _library_single_file(path: str, library: str, dtype: str, device: Optional[str], task: str, config):
    """diffusers' or mindone's own pipeline from a single-file checkpoint: the class fewstep picks for its family and
    `task` (the libraries' AutoPipelines have no from_single_file; fewstep's classes carry their names), with the
    config folder fewstep resolves and checks for it, so both sides build the same models from the same file.
    The libraries build the text encoders from the checkpoint itself (no transformers from_pretrained, so no dtype
    keyword to warn about)."""
    from fewstep.backends.single_file import library_pipeline
    from fewstep.pipelines.checkpoint_family import check_config, checkpoint_tensors
    from fewstep.pipelines.factory import single_file_class
    from fewstep.pipelines.single_file import resolve_config

    family, cls = single_file_class(path, _AUTO_TASKS[task])
    folder = resolve_config(config, family)
    check_config(family, checkpoint_tensors(path), folder)
    backend = "torch" if library == "diffusers" else "mindspore"
    pipe = library_pipeline(backend, cls.__name__, path, folder, cls.component_names(), dtype=dtype)
    if device and backend == "torch":
        pipe = pipe.to(device)
    return pipe
