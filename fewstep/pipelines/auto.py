"""`AutoPipelineForText2Image` / `AutoPipelineForImage2Image` / `AutoPipelineForInpainting`: the class of
their task for a folder, a pipeline or a single-file checkpoint of any task, picked through the factory
(`factory.py`, which reads the one table): the family comes from what is loaded, the task from the
AutoPipeline, and the adapters are switched as diffusers switches them: `controlnet=` (or `adapter=`,
`motion_adapter=`) passed in selects the pipeline with that adapter, `controlnet=None` drops it.
"""

from __future__ import annotations

from fewstep.pipelines import factory, loading
from fewstep.pipelines.hub import LOADED_COMPONENTS


class _AutoPipeline:
    _task = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is built with .from_pretrained(path, ...) or .from_pipe(pipeline).")

    @classmethod
    def _target(cls, key: factory.Key, components: dict, where: str) -> type:
        return factory.lookup(factory.switch(key, cls._task, components), where)

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, backend: str = "torch", **kwargs):
        """The pipeline of this class's task for a single-file checkpoint (the A1111 / civitai layout): the model
        family (SD / SDXL) is read from the checkpoint's keys, the adapter from the components passed, and the
        chosen class's `from_single_file` loads it.

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`):
                The path of a `.safetensors` checkpoint file; pickled checkpoints are refused unread.
            backend (`str`, *optional*, defaults to "torch"):
                "torch" (diffusers' single-file loader) or "mindspore" (mindone's).
            **kwargs (*optional*):
                Passed on to the chosen class's `from_single_file`: `config` (a diffusers-format folder of the same
                family), `dtype` (or `torch_dtype`, `mindspore_dtype`), `device` and components. `controlnet=` (or
                `adapter=`) picks the pipeline with that adapter.

        Returns:
            A fewstep pipeline, e.g. `StableDiffusionXLImg2ImgPipeline` for an SDXL checkpoint and
            `AutoPipelineForImage2Image`, with `pipe.checkpoint_family` set.
        """
        return factory.load_checkpoint(pretrained_model_link_or_path, cls._task, backend=backend, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backend: str = "torch", **kwargs):
        """The pipeline of this class's task for a folder of any task, as diffusers' AutoPipelines pick it:
        the model family (SD / SDXL) and any adapter come from the folder's model_index.json.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A folder holding model_index.json or a hub repository id, as `DiffusionPipeline.from_pretrained`
                takes it.
            backend (`str`, *optional*, defaults to "torch"):
                "torch" (diffusers and transformers) or "mindspore" (mindone).
            **kwargs (*optional*):
                Passed on to the chosen class's `from_pretrained`: `dtype` (or diffusers' `torch_dtype`,
                mindone's `mindspore_dtype`), `device`, `variant` and components. `controlnet=` (or `adapter=`, `motion_adapter=`) picks the pipeline with that
                adapter; `controlnet=None` picks the one without it.

        Returns:
            A fewstep pipeline, e.g. `StableDiffusionXLImg2ImgPipeline` for an SDXL folder and
            `AutoPipelineForImage2Image`.
        """
        # the dtype keywords are checked before any file is read, as the chosen class checks them
        loading.resolve_dtype(*(kwargs.get(k) for k in ("dtype", "torch_dtype", "mindspore_dtype")))
        folder = loading.resolve_folder(pretrained_model_name_or_path, variant=kwargs.get("variant"),
                                        skip=[k for k, v in kwargs.items() if v is not None and k in LOADED_COMPONENTS])
        index = loading.read_model_index(folder)
        key = factory.key_of(index.get("_class_name"), f"{folder!r}")
        target = cls._target(key, kwargs, folder)
        return target.from_pretrained(pretrained_model_name_or_path, backend=backend, **factory.without_dropped(kwargs))

    @classmethod
    def from_pipe(cls, pipeline, **components):
        """The pipeline of this class's task on `pipeline`'s components, sharing its weights.

        Args:
            pipeline (`DiffusionPipeline`):
                A loaded fewstep pipeline of any task; its model family and adapter are kept.
            **components (*optional*):
                Components to add or replace, as `DiffusionPipeline.from_pipe` takes them; `controlnet=`
                (or `adapter=`, `motion_adapter=`) picks the pipeline with that adapter, `controlnet=None`
                the one without it.

        Returns:
            A fewstep pipeline of this task on the same backend.
        """
        target = cls._target(type(pipeline)._key, components, type(pipeline).__name__)
        return target.from_pipe(pipeline, **factory.without_dropped(components))


class AutoPipelineForText2Image(_AutoPipeline):
    """The text-to-image pipeline for a folder or pipeline of any task (ControlNet with `controlnet=`)."""

    _task = "text2img"


class AutoPipelineForImage2Image(_AutoPipeline):
    """The img2img pipeline for a folder or pipeline of any task."""

    _task = "img2img"


class AutoPipelineForInpainting(_AutoPipeline):
    """The inpainting pipeline for a folder or pipeline of any task."""

    _task = "inpaint"
