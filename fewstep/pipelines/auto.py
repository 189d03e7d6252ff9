"""Picking the fewstep pipeline class: `DiffusionPipeline.from_pretrained` on any folder, and
`AutoPipelineForText2Image` / `AutoPipelineForImage2Image` / `AutoPipelineForInpainting`.

A class is looked up by (model family, task, extension). The folder's model_index.json
`_class_name` (diffusers' names) gives all three; an AutoPipeline keeps the family, sets the task,
and switches the extension as diffusers does: `controlnet=` (or `adapter=`) passed in selects the
ControlNet (T2I-Adapter) variant, `controlnet=None` drops it. `pipeline_class` is that lookup in public,
also from a single-file checkpoint's family (`DiffusionPipeline.from_single_file`, the CLI).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from fewstep.pipelines import stable_diffusion as sd
from fewstep.pipelines.checkpoint_family import FAMILIES

Key = Tuple[str, str, Optional[str]]  # (family, task, extension)

_CLASSES: Dict[Key, type] = {
    ("sd", "text2img", None): sd.StableDiffusionPipeline,
    ("sd", "img2img", None): sd.StableDiffusionImg2ImgPipeline,
    ("sd", "inpaint", None): sd.StableDiffusionInpaintPipeline,
    ("sdxl", "text2img", None): sd.StableDiffusionXLPipeline,
    ("sdxl", "img2img", None): sd.StableDiffusionXLImg2ImgPipeline,
    ("sdxl", "inpaint", None): sd.StableDiffusionXLInpaintPipeline,
    ("sd", "text2img", "controlnet"): sd.StableDiffusionControlNetPipeline,
    ("sdxl", "text2img", "controlnet"): sd.StableDiffusionXLControlNetPipeline,
    ("sd", "text2img", "adapter"): sd.StableDiffusionAdapterPipeline,
    ("sdxl", "text2img", "adapter"): sd.StableDiffusionXLAdapterPipeline,
    ("sd", "text2img", "motion_adapter"): sd.AnimateDiffPipeline,
}
# diffusers class names fewstep reads, beyond its own: LCM's folders (SimianLuo/LCM_Dreamshaper_v7)
_ALIASES: Dict[str, Key] = {"LatentConsistencyModelPipeline": ("sd", "text2img", None),
                            "LatentConsistencyModelImg2ImgPipeline": ("sd", "img2img", None)}
# components whose presence selects a pipeline variant
_EXTENSION_COMPONENTS = ("controlnet", "adapter", "motion_adapter")
_KEYS: Dict[str, Key] = {**{cls.__name__: key for key, cls in _CLASSES.items()}, **_ALIASES}


def supported() -> str:
    return ", ".join(sorted(_KEYS))


def key_of(class_name: str, where: str) -> Key:
    if class_name not in _KEYS:
        raise ValueError(f"{where} is a {class_name}, which fewstep does not run; supported pipelines: {supported()}.")
    return _KEYS[class_name]


def _lookup(key: Key, where: str) -> type:
    if key not in _CLASSES:
        family, task, ext = key
        raise ValueError(f"fewstep has no {task} pipeline for {family.upper()} with a {ext} yet ({where}); "
                         f"supported pipelines: {', '.join(c.__name__ for c in _CLASSES.values())}.")
    return _CLASSES[key]


def class_for_folder(index: dict, folder: str) -> type:
    """The fewstep class for a folder's model_index.json."""
    return _lookup(key_of(index.get("_class_name"), f"{folder!r}"), folder)


def _extension(current: Optional[str], components: dict) -> Optional[str]:
    for ext in _EXTENSION_COMPONENTS:
        if ext in components:
            return ext if components[ext] is not None else None
    return current


TASKS = ("text2img", "img2img", "inpaint")


def pipeline_class(pipeline: str, task: Optional[str] = None, components: Optional[dict] = None,
                   where: Optional[str] = None) -> type:
    """The fewstep pipeline class for a model family, a task and the components passed, as
    `DiffusionPipeline.from_pretrained` and the AutoPipelines pick it.

    Args:
        pipeline (`str`):
            A pipeline class name (model_index.json's `_class_name`, diffusers' or fewstep's, e.g.
            "StableDiffusionXLPipeline" or "LatentConsistencyModelPipeline") or a single-file checkpoint family's
            key (`CheckpointFamily.key`: "sd15", "sd21-v", "sdxl", "sd15-inpaint"...). It gives the family (SD /
            SDXL), the task and the extension when `task` and `components` do not change them.
        task (`str`, *optional*):
            "text2img", "img2img" or "inpaint"; None keeps the task `pipeline` names.
        components (`dict`, *optional*):
            The components to be passed by name: `controlnet`, `adapter` or `motion_adapter` among them selects
            the pipeline with that adapter, and the same name given as None the one without it.
        where (`str`, *optional*):
            What `pipeline` was read from (a folder, a checkpoint), named in errors.

    Returns:
        `type`: the fewstep pipeline class, e.g. `StableDiffusionXLControlNetPipeline` for ("sdxl", "text2img",
        {"controlnet": ...}). A ValueError names what fewstep runs when there is no such class.
    """
    where = where or repr(pipeline)
    if task is not None and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {', '.join(TASKS)}.")
    if pipeline in FAMILIES:  # a checkpoint family: its main task's class
        pipeline = FAMILIES[pipeline].pipeline
    family, named_task, ext = key_of(pipeline, where)
    return _lookup((family, task or named_task, _extension(ext, components or {})), where)


class _AutoPipeline:
    _task = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is built with .from_pretrained(path, ...) or .from_pipe(pipeline).")

    @classmethod
    def _target(cls, key: Key, components: dict, where: str) -> type:
        family, _, ext = key
        return _lookup((family, cls._task, _extension(ext, components)), where)

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
        from fewstep.pipelines.single_file import load_checkpoint  # lazily: single_file imports auto's classes

        return load_checkpoint(pretrained_model_link_or_path, cls._task, backend=backend, **kwargs)

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
        from fewstep.pipelines import loading
        from fewstep.pipelines.hub import LOADED_COMPONENTS

        # the dtype keywords are checked before any file is read, as the chosen class checks them
        loading.resolve_dtype(*(kwargs.get(k) for k in ("dtype", "torch_dtype", "mindspore_dtype")))
        folder = loading.resolve_folder(pretrained_model_name_or_path, variant=kwargs.get("variant"),
                                        skip=[k for k, v in kwargs.items() if v is not None and k in LOADED_COMPONENTS])
        index = loading.read_model_index(folder)
        key = key_of(index.get("_class_name"), f"{folder!r}")
        components = {k: v for k, v in kwargs.items() if k in _EXTENSION_COMPONENTS}
        target = cls._target(key, components, folder)
        kwargs = {k: v for k, v in kwargs.items() if not (k in _EXTENSION_COMPONENTS and v is None)}
        return target.from_pretrained(pretrained_model_name_or_path, backend=backend, **kwargs)

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
        key = key_of(type(pipeline).__name__, f"{type(pipeline).__name__}")
        target = cls._target(key, components, type(pipeline).__name__)
        components = {k: v for k, v in components.items() if not (k in _EXTENSION_COMPONENTS and v is None)}
        return target.from_pipe(pipeline, **components)


class AutoPipelineForText2Image(_AutoPipeline):
    """The text-to-image pipeline for a folder or pipeline of any task (ControlNet with `controlnet=`)."""

    _task = "text2img"


class AutoPipelineForImage2Image(_AutoPipeline):
    """The img2img pipeline for a folder or pipeline of any task."""

    _task = "img2img"


class AutoPipelineForInpainting(_AutoPipeline):
    """The inpainting pipeline for a folder or pipeline of any task."""

    _task = "inpaint"
