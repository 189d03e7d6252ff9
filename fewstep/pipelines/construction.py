"""How a pipeline is made: `from_pretrained` (a diffusers-format folder or hub id), `from_single_file` and
`from_pipe`, as diffusers' DiffusionPipeline has them, mixed into every pipeline class (`base.Pipeline`).

A class with a key (a row of `table.py`) loads itself; a class without one (`DiffusionPipeline`) picks the
class first, through `_class_for_folder` / `_load_checkpoint`, which `factory.py` implements: this module
knows no pipeline class.
"""

from __future__ import annotations

from typing import Optional

from fewstep.backends import get_backend
from fewstep.pipelines import loading


class Construction:
    """`from_pretrained`, `from_single_file` and `from_pipe` for `base.Pipeline`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, backend: str = "torch", dtype=None,
                        device: Optional[str] = None, variant: Optional[str] = None, *, torch_dtype=None,
                        mindspore_dtype=None, **components):
        """Load a diffusers-format pipeline folder (or hub id) on `backend` with its trusted library.

        Any component may be passed in instead (`unet=`, `vae=`, `controlnet=`, `adapter=`,
        `text_encoder=`, `scheduler=`...): a fewstep component (`fewstep.ControlNetModel.from_pretrained`)
        or the framework's own model; the rest is loaded from the folder. Called on `DiffusionPipeline`
        itself, it builds the fewstep class that the folder's model_index.json names.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A folder holding model_index.json (as diffusers' `save_pretrained` writes it) or a hub
                repository id, fetched through huggingface_hub's cache (offline when the snapshot is there).
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads the components with diffusers and transformers, "mindspore" with
                mindone.diffusers and mindone.transformers.
            dtype (`str` or a framework dtype, *optional*):
                The dtype of the loaded models: "float32" (when no dtype keyword is given), "float16" or
                "bfloat16" (aliases such as "fp16" or "torch.float16", and torch / MindSpore dtype objects, are
                read too). Components passed in keep their own.
            torch_dtype (`torch.dtype`, *optional*):
                diffusers' keyword for the same: `torch_dtype=torch.float16` gives what `dtype="float16"` gives.
                Read by the dtype's name, on either backend, so a diffusers snippet keeps working with
                backend="mindspore"; a MindSpore dtype here, or keywords naming different dtypes, are refused.
            mindspore_dtype (`mindspore.Type`, *optional*):
                mindone's keyword for the same (`mindspore_dtype=mindspore.float16`), read the same way.
            device (`str`, *optional*):
                torch only: the device the loaded models are moved to (e.g. "cuda"); None leaves them on
                the CPU. MindSpore places models by its own context (`mindspore.set_context(device_target=...)`).
            variant (`str`, *optional*):
                The weight files' variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
            **components (*optional*):
                Components to use instead of loading them from the folder, by name (see
                `component_names()`, plus `scheduler`): fewstep components, the framework's own models
                (wrapped; a model of the other framework is refused), a list of ControlNets for
                `controlnet=`, or a fewstep scheduler. Components a base-model folder lacks
                (`controlnet`, `adapter`, `motion_adapter`) must be passed. Every one is checked before
                anything is loaded.

        Returns:
            The pipeline, with the folder's scheduler as a fewstep TCD/LCM scheduler unless `scheduler=`
            is given (a folder scheduler of another kind becomes a TCDScheduler with its config).
        """
        # the dtype keywords are checked before any file is read
        dtype = loading.resolve_dtype(dtype, torch_dtype, mindspore_dtype)
        folder = loading.resolve_folder(pretrained_model_name_or_path, variant=variant,
                                        skip=[n for n, c in components.items() if c is not None])
        index = loading.read_model_index(folder)
        if cls._key is None:
            cls = cls._class_for_folder(index, folder)
        names = cls.component_names()
        unknown = sorted(set(components) - set(names) - {"scheduler"})
        if unknown:
            raise ValueError(f"{cls.__name__} has no component(s) {unknown}; pass only {names + ['scheduler']}.")
        scheduler = components.pop("scheduler", None)
        ops = get_backend(backend)
        # every passed component is checked before anything is loaded from the folder
        given = {n: loading.adopt_component(ops.name, n, c) for n, c in components.items() if c is not None}
        # an optional component passed as None, or that the folder saves as [null, null] (the SDXL refiner's first
        # text encoder), stays None, as diffusers leaves it
        optional = cls.optional_component_names()
        missing = [n for n in names if n not in given and not (
            n in optional and (n in components or loading.component_absent(index, n)))]
        loaded = loading.load_components(folder, index, missing, ops.name, dtype=dtype, device=device,
                                         variant=variant, pipeline=cls.__name__)
        if scheduler is None:
            scheduler = loading.load_scheduler(folder)
        pipe = cls(ops.name, scheduler, **loaded, **given)
        pipe.name_or_path = pretrained_model_name_or_path
        # pipeline-level settings model_index.json carries beside the components (SDXL's choice of zero negative
        # embeddings when no negative prompt is given, the refiner's aesthetic-score conditioning): those the
        # class's parts read (`Part.attributes`)
        pipe.register_to_config(**{name: index[name] for name in cls.settings() if name in index})
        return pipe

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, backend: str = "torch", **kwargs):
        """Load a single-file `.safetensors` checkpoint (the A1111 / civitai layout) into the fewstep pipeline class
        its model family names, as `from_pretrained` picks the class from model_index.json: SD 1.x / 2.x,
        SDXL, or their inpainting pipelines, with the ControlNet variant when `controlnet=` is passed. The
        chosen class's own `from_single_file` loads it (see `StableDiffusionPipeline.from_single_file`).

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`):
                The path of a `.safetensors` checkpoint file; pickled checkpoints are refused unread.
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads it with diffusers' single-file loader, "mindspore" with mindone.diffusers'.
            **kwargs (*optional*):
                Passed on to the chosen class's `from_single_file`: `config` (a diffusers-format folder of the
                same family), `dtype` (or `torch_dtype`, `mindspore_dtype`), `device` and components by name;
                `controlnet=` picks the ControlNet pipeline of the family.

        Returns:
            The pipeline of the checkpoint's family, with `pipe.checkpoint_family` naming it.
        """
        if cls._key is not None:  # a class without FromSingleFileMixin (T2I-Adapter, AnimateDiff)
            raise ValueError(f"{cls.__name__} does not load single-file checkpoints: load it with "
                             f"DiffusionPipeline.from_single_file(path, config=...), then make this pipeline on its "
                             f"models with {cls.__name__}.from_pipe(pipe, ...).")
        return cls._load_checkpoint(pretrained_model_link_or_path, backend=backend, **kwargs)

    @classmethod
    def _class_for_folder(cls, index: dict, folder: str) -> type:
        """The concrete class for a folder's model_index.json (DiffusionPipeline's, in factory.py)."""
        raise TypeError(f"{cls.__name__} is not a pipeline class; load folders with fewstep.DiffusionPipeline.")

    @classmethod
    def _load_checkpoint(cls, path, backend: str, **kwargs):
        """A single-file checkpoint in the class its family names (DiffusionPipeline's, in factory.py)."""
        raise TypeError(f"{cls.__name__} is not a pipeline class; load checkpoints with fewstep.DiffusionPipeline.")

    @classmethod
    def from_pipe(cls, pipeline, **components):
        """A pipeline of this class on `pipeline`'s components: the same model objects (no weight is
        copied), its scheduler and LoRA state; `components` add or replace some (`controlnet=`).

        Args:
            pipeline (`DiffusionPipeline`):
                The loaded pipeline whose components, scheduler, LoRA and IP-Adapter state are shared.
                Called on `DiffusionPipeline` itself, the new pipeline is of `pipeline`'s class.
            **components (*optional*):
                Components to add or replace, by name (see `component_names()`, plus `scheduler`), as
                `from_pretrained` takes them; those this class needs and `pipeline` lacks must be given.

        Returns:
            A pipeline of this class on the same backend, sharing `pipeline`'s weights.
        """
        if cls._key is None:
            cls = type(pipeline)
        names = cls.component_names()
        unknown = sorted(set(components) - set(names) - {"scheduler"})
        if unknown:
            raise ValueError(f"{cls.__name__} has no component(s) {unknown}; pass only {names + ['scheduler']}.")
        scheduler = components.pop("scheduler", None) or pipeline.scheduler
        shared = {n: getattr(pipeline, n) for n in names if getattr(pipeline, n, None) is not None}
        shared.update({n: loading.adopt_component(pipeline.ops.name, n, c) for n, c in components.items()})
        missing = [n for n in names if shared.get(n) is None and n not in cls.optional_component_names()]
        if missing:
            raise ValueError(f"{cls.__name__} needs {missing}, which {type(pipeline).__name__} does not have; pass "
                             f"them: {cls.__name__}.from_pipe(pipe, {missing[0]}=...).")
        pipe = cls(pipeline.ops.name, scheduler, **shared)
        # the settings both classes have (force_zeros_for_empty_prompt, requires_aesthetics_score), as diffusers
        # passes the original pipeline's config on
        settings = [n for n in cls.settings() if n in type(pipeline).settings()] if hasattr(pipeline, "settings") else []
        for attr in ("name_or_path", *settings, "_lora", "_ip", "image_encoder", "feature_extractor",
                     "_progress_config"):
            if attr in pipeline.__dict__:
                setattr(pipe, attr, pipeline.__dict__[attr])
        return pipe
