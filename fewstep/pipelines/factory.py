"""The pipeline classes, made from the one table (`table.py`), and every lookup of a class by key.

Each row becomes a class: its parts in the order their hooks run (the LoRA scale first, so the text
encoders run at it; the family, which encodes the prompt; the task, which sets the timesteps and the first
latents; the layout; the guidance rule; the row's adapters; image prompts last), the mixins those parts
bring (`load_lora_weights`, `load_ip_adapter`, `from_single_file`), the row's key and diffusers' defaults.
`DiffusionPipeline.from_pretrained` on a folder, the AutoPipelines (`auto.py`), `from_single_file` and the
CLI pick a class here: the key of a class name or a checkpoint family, with the task and the adapters
switched by what the call passes (`controlnet=`, `adapter=`, `motion_adapter=`; None drops it).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from fewstep.pipelines import time_ids
from fewstep.pipelines.base import Pipeline
from fewstep.pipelines.checkpoint_family import FAMILIES, family_of, read_header
from fewstep.pipelines.conditioning import StableDiffusion, StableDiffusionXL
from fewstep.pipelines.guidance import Guidance, LCMGuidance
from fewstep.pipelines.ip_adapter import IPAdapter
from fewstep.pipelines.layouts import ImageLayout, VideoLayout
from fewstep.pipelines.lora import LoraScale
from fewstep.pipelines.single_file import FromSingleFileMixin
from fewstep.pipelines.table import TABLE, Row
from fewstep.pipelines.tasks import Img2Img, Inpaint, LCMImg2Img, LCMText2Image, Text2Image, VideoToVideo

Key = Tuple[str, str, str, Tuple[str, ...]]  # (family, task, layout, sorted adapter names)


class DiffusionPipeline(Pipeline):
    """The base of every fewstep pipeline class. Called on this class itself, `from_pretrained` builds the class
    that the folder's model_index.json names, `from_single_file` the class of the checkpoint's family, and
    `from_pipe` a pipeline of the given pipeline's class."""

    @classmethod
    def _class_for_folder(cls, index: dict, folder: str) -> type:
        return class_for_folder(index, folder)

    @classmethod
    def _load_checkpoint(cls, path, backend: str, **kwargs):
        return load_checkpoint(path, None, backend=backend, **kwargs)


# ---------------------------------------------------------------------- the parts of a row
_FAMILIES = {"sd": StableDiffusion(), "sdxl": StableDiffusionXL(), "lcm": StableDiffusion()}
# SDXL's time ids per diffusers class (time_ids.py): text-to-image takes negative sizes; img2img and inpainting
# also the aesthetic score; diffusers' ControlNet inpainting the score without negative sizes
_SDXL_BY_RULE = {rule: StableDiffusionXL(rule) for rule in (time_ids.SIZES, time_ids.AESTHETIC,
                                                            time_ids.AESTHETIC_SAME_SIZES)}
_GUIDANCE = {"cfg": Guidance(), "cfg-only": Guidance(embedding=False), "lcm": LCMGuidance()}
_TASKS = {"text2img": Text2Image(), "img2img": Img2Img(), "inpaint": Inpaint(), "video2video": VideoToVideo()}
_LCM_TASKS = {"text2img": LCMText2Image(), "img2img": LCMImg2Img()}
_LAYOUTS = {"image": ImageLayout(), "video": VideoLayout()}
_LORA, _IP_ADAPTER = LoraScale(), IPAdapter()
#: the loop's optional inputs a part may read; one given that no part of the class reads is refused
_OPTIONAL_INPUTS = ("image", "mask_image")


def row_key(row: Row) -> Key:
    return (row.family, row.task, row.layout, tuple(sorted(a.name for a in row.adapters)))


def _family(row: Row):
    if row.family != "sdxl":
        return _FAMILIES[row.family]
    if row.task == "text2img":
        return _SDXL_BY_RULE[time_ids.SIZES]
    controlnet = any(a.name == "controlnet" for a in row.adapters)
    return _SDXL_BY_RULE[time_ids.AESTHETIC_SAME_SIZES if controlnet and row.task == "inpaint" else time_ids.AESTHETIC]


def _make(row: Row) -> type:
    family, layout = _family(row), _LAYOUTS[row.layout]
    task = (_LCM_TASKS if row.family == "lcm" else _TASKS)[row.task]
    guidance = _GUIDANCE["lcm" if row.family == "lcm" else row.guidance]
    parts = (_LORA, family, task, layout, guidance, *row.adapters, _IP_ADAPTER)
    mixins = []
    for part in parts:
        mixins += [m for m in part.mixins if m not in mixins]
    if row.single_file:
        mixins.append(FromSingleFileMixin)
    attributes = {}
    for part in parts:
        attributes.update(part.attributes)
    claimed = {n for p in parts for n in (*p.uses, *p.arguments) if n in _OPTIONAL_INPUTS}
    namespace = {
        "__doc__": row.doc, "__module__": "fewstep.pipelines", "__qualname__": row.name,
        "_key": row_key(row), "_parts": parts, "_layout": layout,
        "_extensions": tuple(p for p in parts if p is not layout), "_claimed": frozenset(claimed),
        "_default_strength": row.strength if row.strength is not None else task.default_strength,
        "_default_guidance": getattr(guidance, "default_guidance", family.default_guidance),
        **attributes,
    }
    return type(row.name, (*mixins, DiffusionPipeline), namespace)


CLASSES: Dict[str, type] = {row.name: _make(row) for row in TABLE}
_BY_KEY: Dict[Key, type] = {cls._key: cls for cls in CLASSES.values()}
#: a family whose rows lack a task borrows that task from another (diffusers has no LCM inpainting)
_FALLBACK = {"lcm": "sd"}
#: the components whose presence selects a pipeline with that adapter
ADAPTER_COMPONENTS: Tuple[str, ...] = tuple(dict.fromkeys(c for row in TABLE for a in row.adapters
                                                          for c in a.components))
TASKS: Tuple[str, ...] = tuple(dict.fromkeys(row.task for row in TABLE))


def supported() -> str:
    return ", ".join(sorted(CLASSES))


def key_of(class_name: str, where: str) -> Key:
    """The key of a class name (model_index.json's `_class_name`), diffusers' or fewstep's."""
    if class_name not in CLASSES:
        raise ValueError(f"{where} is a {class_name}, which fewstep does not run; supported pipelines: {supported()}.")
    return CLASSES[class_name]._key


def lookup(key: Key, where: str) -> type:
    family, task, layout, adapters = key
    if key not in _BY_KEY and family in _FALLBACK:
        key = (_FALLBACK[family], task, layout, adapters)
    if key not in _BY_KEY:
        what = f" with {' and '.join(adapters)}" if adapters else ""
        raise ValueError(f"fewstep has no {task} pipeline for {family.upper()}{what} ({where}); supported "
                         f"pipelines: {supported()}.")
    return _BY_KEY[key]


def switch(key: Key, task: Optional[str] = None, components: Optional[dict] = None) -> Key:
    """`key` with another task and the adapters the passed components add (a component given as None
    removes its adapter); motion modules make the layout a video."""
    family, named_task, layout, adapters = key
    chosen = set(adapters)
    for name, value in (components or {}).items():
        if name in ADAPTER_COMPONENTS:
            (chosen.add if value is not None else chosen.discard)(name)
    layout = "video" if "motion_adapter" in chosen else "image"
    return family, task or named_task, layout, tuple(sorted(chosen))


def class_for_folder(index: dict, folder: str) -> type:
    """The fewstep class for a folder's model_index.json."""
    return lookup(key_of(index.get("_class_name"), f"{folder!r}"), folder)


def check_task(task: Optional[str]) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {', '.join(TASKS)}.")


def pipeline_class(pipeline: str, task: Optional[str] = None, components: Optional[dict] = None,
                   where: Optional[str] = None) -> type:
    """The fewstep pipeline class for a model family, a task and the components passed, as
    `DiffusionPipeline.from_pretrained` and the AutoPipelines pick it.

    Args:
        pipeline (`str`):
            A pipeline class name (model_index.json's `_class_name`, diffusers' or fewstep's, e.g.
            "StableDiffusionXLPipeline" or "LatentConsistencyModelPipeline") or a single-file checkpoint family's
            key (`CheckpointFamily.key`: "sd15", "sd21-v", "sdxl", "sd15-inpaint"...). It gives the family (SD /
            SDXL), the task and the adapters when `task` and `components` do not change them.
        task (`str`, *optional*):
            "text2img", "img2img", "inpaint" or "video2video"; None keeps the task `pipeline` names.
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
    check_task(task)
    if pipeline in FAMILIES:  # a checkpoint family: its main task's class
        pipeline = FAMILIES[pipeline].pipeline
    return lookup(switch(key_of(pipeline, where), task, components), where)


def without_dropped(components: dict) -> dict:
    """The components to pass on: an adapter given as None only changed the choice of class."""
    return {k: v for k, v in components.items() if not (k in ADAPTER_COMPONENTS and v is None)}


def single_file_class(path, task: Optional[str] = None, components: Optional[dict] = None):
    """(the checkpoint's family, the fewstep class to load it with): the class as `pipeline_class` picks it for
    the family's pipeline, `task` (None: the family's own, e.g. inpainting for an inpainting checkpoint) and the
    components to be passed (`controlnet=`). Header only: pickles are refused unread; a class that cannot load a
    checkpoint (T2I-Adapter, AnimateDiff) is refused with what to do."""
    path = os.fspath(path)
    tensors, metadata = read_header(path)
    family = family_of(tensors, metadata, where=repr(path))
    cls = pipeline_class(family.key, task, components, where=repr(path))
    if not issubclass(cls, FromSingleFileMixin):
        raise ValueError(f"{cls.__name__} does not load single-file checkpoints: load {path} with fewstep."
                         f"{family.pipeline}.from_single_file(path, ...) and make this pipeline on its models with "
                         f"{cls.__name__}.from_pipe(pipe, ...), or convert it to a diffusers folder once (diffusers."
                         f"{family.pipeline}.from_single_file(path).save_pretrained(folder)) and pass the folder.")
    return family, cls


def load_checkpoint(path, task: Optional[str] = None, **kwargs):
    """`from_single_file` of the class `single_file_class` picks (DiffusionPipeline's and the AutoPipelines'):
    the one implementation is FromSingleFileMixin's, called on that class."""
    _, cls = single_file_class(path, task, kwargs)
    return cls.from_single_file(path, **without_dropped(kwargs))
