"""`from_single_file`: one `.safetensors` checkpoint in the original layout (A1111 / civitai), loaded on either
backend through the framework's own single-file loader (diffusers / mindone.diffusers, see
fewstep.backends.single_file), with a diffusers-format config folder describing the models.

Before the library sees the file, fewstep reads its header only (fewstep.pipelines.checkpoint_family): a pickle
is refused unread, the model family is named, the pipeline class and the config folder are checked against it,
and a missing config is fetched (configs only) or reported with what to pass. The scheduler is fewstep's TCD /
LCM built from the config folder's scheduler config, as `from_pretrained` builds it from a pipeline folder.
"""

from __future__ import annotations

import os
from typing import Optional

from fewstep.backends import get_backend
from fewstep.backends.single_file import load_single_file
from fewstep.pipelines import loading
from fewstep.pipelines.checkpoint_family import (HUB_CONFIGS, CheckpointFamily, check_config, component_prefixes,
                                                 components_in, family_of, read_header)

# what diffusers fetches of a config repository: no weights
_CONFIG_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt", "**/*.model"]


class FromSingleFileMixin:
    """Adds `from_single_file` to a fewstep pipeline class (SD / SDXL, text-to-image, img2img, inpainting,
    ControlNet)."""

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, backend: str = "torch", dtype=None,
                         device: Optional[str] = None, config: Optional[str] = None, *, torch_dtype=None,
                         mindspore_dtype=None, **components):
        """Load a single-file `.safetensors` checkpoint (the A1111 / civitai layout: LDM keys for SD 1.x / 2.x,
        SGM keys for SDXL) on `backend`, through diffusers' `from_single_file` on torch and mindone.diffusers'
        on MindSpore.

        The model family is read from the checkpoint's keys (`fewstep.pipelines.checkpoint_family`) and kept
        as `pipe.checkpoint_family`. Pickled checkpoints (`.ckpt`, `.pt`, `.bin`) are refused without being
        read; convert them to safetensors where you trust them.

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`):
                The path of a `.safetensors` checkpoint file.
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads it with diffusers, "mindspore" with mindone.diffusers.
            dtype (`str` or a framework dtype, *optional*):
                The dtype of the loaded models: "float32" (when no dtype keyword is given), "float16" or
                "bfloat16", read as `from_pretrained` reads it. Components passed in keep their own.
            device (`str`, *optional*):
                torch only: the device the loaded models are moved to (e.g. "cuda"); None leaves them on the
                CPU. MindSpore places models by its own context.
            config (`str` or `os.PathLike`, *optional*):
                A local diffusers-format pipeline folder of the same family (model_index.json and the
                components' config files; its weights are not read), or a hub repository id whose configs are
                fetched. It describes the models the checkpoint's weights go into, and for SD 2.x its
                scheduler decides 512 (epsilon) or 768-v (v-prediction). None fetches the configs of the
                family's reference repository from the hub; where the hub cannot be reached (HF_HUB_OFFLINE,
                no network) that is an error asking for `config=`.
            torch_dtype (`torch.dtype`, *optional*):
                diffusers' keyword for `dtype` (`torch_dtype=torch.float16`), read by the dtype's name on either
                backend, as `from_pretrained` reads it.
            mindspore_dtype (`mindspore.Type`, *optional*):
                mindone's keyword for `dtype` (`mindspore_dtype=mindspore.float16`), read the same way.
            **components (*optional*):
                Components to use instead of loading them from the checkpoint, by name (see
                `component_names()`, plus `scheduler`), as `from_pretrained` takes them. Components a
                checkpoint does not hold (`controlnet`) must be passed.

        Returns:
            The pipeline, with the config folder's scheduler as a fewstep TCD/LCM scheduler unless `scheduler=` is
            given (a scheduler of another kind becomes a TCDScheduler with its config).
        """
        dtype = loading.resolve_dtype(dtype, torch_dtype, mindspore_dtype)  # checked before any file is read
        path = os.fspath(pretrained_model_link_or_path)
        tensors, metadata = read_header(path)  # refuses pickles before reading a byte
        family = family_of(tensors, metadata, where=repr(path))
        _check_class(cls, family)
        names = cls.component_names()
        unknown = sorted(set(components) - set(names) - {"scheduler"})
        if unknown:
            raise ValueError(f"{cls.__name__} has no component(s) {unknown}; pass only {names + ['scheduler']}.")
        outside = [n for n in names if n not in _IN_CHECKPOINT and components.get(n) is None]
        if outside:
            raise ValueError(f"{cls.__name__} needs {outside}, which a checkpoint does not hold: load it (e.g. "
                             f"fewstep.ControlNetModel.from_pretrained(path, backend={backend!r})) and pass "
                             f"{outside[0]}=.")
        held, prefixes = components_in(tensors, family), component_prefixes(family)
        # the refiner holds no first text encoder: its class runs without one (an optional component), as diffusers'
        optional = [n for n in cls.optional_component_names() if n not in held and family.key == "sdxl-refiner"]
        absent = [n for n in names if n in prefixes and n not in held and components.get(n) is None]
        if absent:
            raise ValueError(f"{path!r} holds no {absent[0]} (no key starts with "
                             f"{' or '.join(prefixes[absent[0]])}); load one from a diffusers folder of the "
                             f"same family and pass it as {absent[0]}=.")
        # every check that needs only files comes before a framework is imported
        folder = resolve_config(config, family)
        family = check_config(family, tensors, folder)
        ops = get_backend(backend)
        # passed components are checked (a model of the other framework is refused) before anything loads
        given = {n: loading.adopt_component(ops.name, n, c) for n, c in components.items()
                 if c is not None and n != "scheduler"}
        missing = [n for n in names if n not in given and n not in optional]
        loaded = load_single_file(ops.name, cls.__name__, path, folder, missing, given, dtype=dtype, device=device)
        # the rest is what from_pretrained does with a folder whose components are all given: wrap the models,
        # the folder's scheduler as a fewstep TCD / LCM one (unless scheduler= is given), model_index settings
        pipe = cls.from_pretrained(folder, backend=ops.name, scheduler=components.get("scheduler"), **given, **loaded,
                                   **{n: None for n in optional if n not in given})
        pipe.name_or_path = path
        pipe.checkpoint_family = family
        return pipe


# the components a single-file SD / SDXL checkpoint holds (or whose config and tokenizer files the config has)
_IN_CHECKPOINT = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _check_class(cls, family: CheckpointFamily) -> None:
    """An SD checkpoint into an SDXL class (or the reverse), or a 9-channel inpainting UNet into a class
    that does not inpaint, is refused with the class to use."""
    xl_class = "text_encoder_2" in cls.component_names()
    xl_family = family.key.startswith("sdxl")
    inpaint_class = cls._key[1] == "inpaint"
    if family.key == "sdxl-refiner" and xl_class and cls._key[1] == "text2img":
        # diffusers' text-to-image classes have no aesthetic-score conditioning
        raise ValueError(f"The checkpoint is the SDXL refiner; {cls.__name__} cannot run it (it takes no aesthetic "
                         f"score). Load it with fewstep.StableDiffusionXLImg2ImgPipeline.from_single_file(...) (or "
                         f"StableDiffusionXLInpaintPipeline).")
    if xl_class != xl_family or (family.key.endswith("inpaint") and not inpaint_class):
        raise ValueError(f"The checkpoint is {family.name}; {cls.__name__} cannot run it. Load it with "
                         f"fewstep.{family.pipeline}.from_single_file(...)"
                         + ("" if xl_class != xl_family else " (or another inpainting pipeline of its family)") + ".")


def hub_offline() -> bool:
    """Whether huggingface_hub is told not to reach the network, read as it reads it (HF_HUB_OFFLINE, or
    transformers' older TRANSFORMERS_OFFLINE)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def resolve_config(config, family: CheckpointFamily) -> str:
    """A local config folder: `config` itself, or the configs (no weights) of a hub repository; with no
    `config`, those of the family's reference repository, from the cache when the hub cannot be reached."""
    if config is not None:
        config = os.fspath(config)
        if os.path.isdir(config):
            return config
    repo = config or HUB_CONFIGS[family.key]
    try:
        from fewstep.pipelines import hub

        # the configs only, with a bounded wait for a hub that does not answer (FEWSTEP_HUB_TIMEOUT)
        return hub.snapshot_matching(repo, _CONFIG_PATTERNS, {"local_files_only": hub_offline() or None})
    except Exception as err:  # offline and not cached, no network, no such repository
        if isinstance(err, hub.HubTimeout):
            raise  # one line naming the variable that sets the bound
        reason = ("HF_HUB_OFFLINE is set and they are not in the cache" if hub_offline()
                  else f"the hub could not be reached or refused ({type(err).__name__}: {err})")
        if config is not None:
            raise ValueError(f"config={config!r} is neither a local folder nor a hub repository whose configs could be "
                             f"fetched: {reason}. Pass config=PATH, a local diffusers-format folder of the same "
                             f"family ({family.name}).") from err
        raise ValueError(
            f"This {family.name} checkpoint needs the diffusers configs of its family, and no config= was given: "
            f"fetching those of {repo} failed, {reason}. Pass config=PATH, a local diffusers-format pipeline folder "
            f"of the same family ({family.name}): one written by save_pretrained, or the configs downloaded where "
            f"the hub is reachable (`huggingface-cli download {repo} --include '*.json' '*.txt'`).") from err
