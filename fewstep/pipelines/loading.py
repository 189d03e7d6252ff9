"""Reading a diffusers-format pipeline folder (or hub id): which components, and loading them."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from typing import Dict, Iterable, List, Optional

from fewstep.backends import framework_of, load_component, wrap_component
from fewstep.backends.components_common import Model
from fewstep.core.ops import FLOAT_DTYPES, check_dtype
from fewstep.core.schedulers.lcm import LCMScheduler
from fewstep.core.schedulers.tcd import TCDScheduler

logger = logging.getLogger("fewstep")

_TOKENIZERS = ("tokenizer", "tokenizer_2")


DEFAULT_DTYPE = "float32"
# the dtype keywords from_pretrained takes: fewstep's, diffusers', mindone's
_DTYPE_KEYWORDS = ("dtype", "torch_dtype", "mindspore_dtype")


def dtype_framework(value) -> str:
    """"torch" or "mindspore" for a framework's dtype object, "" for anything else. A framework is asked
    only if it is already imported (whoever holds its dtype imported it): asking never imports one."""
    torch, ms = sys.modules.get("torch"), sys.modules.get("mindspore")
    if torch is not None and isinstance(value, torch.dtype):
        return "torch"
    if ms is not None and isinstance(value, ms.Type):
        return "mindspore"
    return ""


def dtype_name(value, keyword: str = "dtype") -> str:
    """fewstep's name ("float16", ...) of a floating dtype given as a name ("float16", "fp16",
    "torch.float16") or as a torch or MindSpore dtype object; a ValueError naming `keyword` otherwise."""
    framework = dtype_framework(value)
    if not isinstance(value, str) and not framework:
        raise ValueError(f"{keyword}= takes a dtype name such as 'float16' or a torch / MindSpore dtype; got a "
                         f"{type(value).__name__} ({value!r}).")
    # str(torch.float16) is "torch.float16"; str(mindspore.float16) is "Float16"
    text = str(value).lower() if framework == "mindspore" else str(value)
    try:
        name = check_dtype(text)
    except ValueError:
        name = None
    if name not in FLOAT_DTYPES:
        raise ValueError(f"{keyword}={value!r} is not a floating dtype fewstep loads models in; use one of "
                         f"{', '.join(FLOAT_DTYPES)} (or torch.float16 / mindspore.float16 ...).")
    return name


def resolve_dtype(dtype=None, torch_dtype=None, mindspore_dtype=None, default: Optional[str] = DEFAULT_DTYPE):
    """The one dtype name that `dtype=`, `torch_dtype=` (diffusers' keyword) and `mindspore_dtype=`
    (mindone's) ask for, or `default` when none is given.

    Each keyword names a dtype, read by name on either backend: `torch_dtype=torch.float16` with
    backend="mindspore" loads float16, so a diffusers snippet keeps working when only `backend=` changes.
    What is refused, with a ValueError: a dtype object of the other framework under a framework's keyword
    (`torch_dtype=mindspore.float16`: a slip, not a port), and keywords that name different dtypes."""
    given = {k: v for k, v in zip(_DTYPE_KEYWORDS, (dtype, torch_dtype, mindspore_dtype)) if v is not None}
    for keyword, own in (("torch_dtype", "torch"), ("mindspore_dtype", "mindspore")):
        other = dtype_framework(given.get(keyword))
        if other and other != own:
            raise ValueError(f"{keyword}= got {other}'s dtype {given[keyword]!r}; pass a {own} dtype there, or "
                             f"this one as {other}_dtype= or dtype=.")
    names = {k: dtype_name(v, k) for k, v in given.items()}
    if len(set(names.values())) > 1:
        stated = ", ".join(f"{k}={given[k]!r}" for k in names)
        raise ValueError(f"The dtype keywords disagree ({stated}); pass one of them.")
    return next(iter(names.values()), default)


def resolve_folder(path_or_id: str, what: str = "the pipeline folder that holds model_index.json",
                   variant: Optional[str] = None, skip: Iterable[str] = (), subfolder: Optional[str] = None) -> str:
    """A local folder for a path or a hub id. A hub id is fetched through huggingface_hub's cache (which
    works offline when the snapshot is already there) with only the files fewstep loads: for a pipeline, its
    components' configs and safetensors weights of `variant` (the plain ones without), tokenizers and
    scheduler, leaving out the components in `skip` (passed in by the caller); with `subfolder`, only that
    model's config and weights. See fewstep.pipelines.hub. A hub that does not answer fails within
    FEWSTEP_HUB_TIMEOUT seconds."""
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise ValueError(f"Expected a folder path or hub id, got a {type(path_or_id).__name__}; pass {what}.")
    path_or_id = os.fspath(path_or_id)
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        single = (" A single-file checkpoint (.safetensors) loads with the pipeline's from_single_file(path, "
                  "config=...) or `fewstep generate --model FILE`.") if path_or_id.endswith(".safetensors") else ""
        raise ValueError(f"{path_or_id!r} is a file; pass {what}.{single}")
    try:
        from huggingface_hub import constants
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise ValueError(f"{path_or_id!r} is not a folder, and huggingface_hub is not installed to fetch it.") from err
    from fewstep.pipelines import hub

    try:
        return hub.snapshot(path_or_id, variant=variant, skip=skip, subfolder=subfolder)
    except hub.HubError:
        raise  # already one line: a timeout naming the variable that sets it, or a file the repository lacks
    except Exception as err:
        # huggingface_hub read HF_ENDPOINT and HF_HUB_OFFLINE when it was imported; say which applied
        where = ("HF_HUB_OFFLINE is set, so only the local cache was searched" if constants.HF_HUB_OFFLINE
                 else f"the hub at {constants.ENDPOINT} was asked (set HF_ENDPOINT to use a mirror)")
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path_or_id!r} is neither a local folder nor a hub repository that could be fetched; {where} "
            f"({reason}). Pass the path of a diffusers-format pipeline folder, or download it first with "
            f"`huggingface-cli download {path_or_id}`."
        ) from err


def read_model_index(folder: str) -> dict:
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise ValueError(
            f"{folder!r} has no model_index.json: it is not a diffusers-format pipeline folder. Save one with "
            f"diffusers' `pipe.save_pretrained(path)`, or pass the folder that holds model_index.json."
        )
    return read_json_object(index_path, "the pipeline's model_index.json",
                            "save the folder again with diffusers' `pipe.save_pretrained(path)`")


_PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickled_weights(component: str) -> None:
    """fewstep never unpickles: a component folder whose weights are only in pickled files (`.bin`, `.ckpt`...)
    is refused before anything loads, with how to convert it."""
    try:
        names = os.listdir(component)
    except OSError:
        return
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(_PICKLED))
    if pickled:
        raise ValueError(f"{component} holds its weights only as pickles ({', '.join(pickled)}), which can run code "
                         f"when read and which fewstep never loads; convert them to safetensors (load the model in "
                         f"diffusers/transformers in a trusted place and `save_pretrained(path, "
                         f"safe_serialization=True)`).")


def read_json_object(path: str, what: str, fix: str) -> dict:
    """The JSON object in `path`; a ValueError naming the file and `fix` when it is empty, truncated, not UTF-8,
    nested too deeply or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(err, RecursionError) else f"not valid JSON: {err}"
        raise ValueError(f"{path} ({what}) is {reason}; {fix}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} ({what}) holds a JSON {type(value).__name__}, not an object; {fix}.")
    return value


# components a base-model folder does not carry; the message says where to get them
_LOADERS = {"controlnet": "fewstep.ControlNetModel.from_pretrained(...)", "adapter": "fewstep.T2IAdapter.from_pretrained(...)",
            "motion_adapter": "fewstep.MotionAdapter.from_pretrained(...)"}


def component_absent(index: dict, name: str) -> bool:
    """Whether model_index.json saves no `name` ([null, null], as diffusers writes an optional component that is
    None, or no entry at all)."""
    spec = index.get(name)
    return spec is None or (isinstance(spec, list) and len(spec) == 2 and spec[0] is None)


def _component_spec(index: dict, folder: str, name: str, pipeline: str):
    spec = index.get(name)
    if spec is not None and not (isinstance(spec, list) and len(spec) == 2):
        raise ValueError(f"{folder}/model_index.json: the {name!r} entry is {spec!r}, not [library, class name]; save "
                         f"the folder again with diffusers' `pipe.save_pretrained(path)`.")
    if not spec or spec[0] is None or not os.path.isdir(os.path.join(folder, name)):
        if name in _LOADERS:
            raise ValueError(f"{pipeline} needs a {name!r} and the folder {folder!r} has none: load one with "
                             f"{_LOADERS[name]} and pass it as {name}=.")
        raise ValueError(
            f"The pipeline folder {folder!r} is missing its {name!r} component (model_index.json entry "
            f"{spec!r}, folder {name}/). This pipeline needs it: use a complete pipeline folder, or pass {name}=."
        )
    if isinstance(spec[1], str) and spec[1].startswith("Multi") and spec[1] not in _MULTI:
        raise ValueError(f"{folder!r} saves a {spec[1]}; load each model on its own and pass a list as {name}=.")
    return spec


# diffusers' containers of several models, saved as <name>/, <name>_1/, <name>_2/... (read back while they exist)
_MULTI = {"MultiAdapter": "T2IAdapter", "MultiControlNetModel": "ControlNetModel"}


def multi_folders(folder: str, name: str) -> List[str]:
    """The folders of a saved MultiAdapter / MultiControlNetModel, as diffusers' `from_pretrained` finds them."""
    found = [os.path.join(folder, name)]
    while os.path.isdir(os.path.join(folder, f"{name}_{len(found)}")):
        found.append(os.path.join(folder, f"{name}_{len(found)}"))
    return found


def component_framework(value) -> str:
    """The framework a component's model belongs to ("" for tokenizers, schedulers, plain objects)."""
    if isinstance(value, (list, tuple)):
        names = {component_framework(v) for v in value} - {""}
        return names.pop() if len(names) == 1 else ("mixed" if names else "")
    return framework_of(getattr(value, "module", value))


def check_component_backend(name: str, value, backend: str) -> None:
    framework = component_framework(value)
    if framework and framework != backend:
        raise ValueError(
            f"The {name!r} component is a {framework} model but this pipeline runs on {backend}: load it with "
            f"backend={backend!r} (e.g. fewstep.ControlNetModel.from_pretrained(path, backend={backend!r})), "
            f"or load the pipeline with backend={framework!r}."
        )


def adopt_component(backend: str, name: str, value):
    """A passed-in component as the pipeline keeps it: fewstep components as they are, the framework's
    own models (a diffusers ControlNetModel, a mindone UNet) wrapped; lists (several ControlNets) item
    by item. A model of the other framework is refused."""
    compiled = _compiled_component(value)
    if compiled is not None:
        return compiled
    check_component_backend(name, value, backend)
    if type(value).__name__ in ("MultiAdapter", "MultiControlNetModel"):  # the library's own list of models
        value = list(getattr(value, "adapters", None) or getattr(value, "nets"))
    if isinstance(value, (list, tuple)):
        return [adopt_component(backend, name, v) for v in value]
    if framework_of(value) in ("torch", "mindspore"):  # a raw model, not yet wrapped
        return wrap_component(backend, name, value)
    return value


def _compiled_component(value):
    """`torch.compile(pipe.unet)` (diffusers' idiom on a fewstep pipeline): a function wrapping a fewstep component
    (torch.compile of an object that is not a model returns one, with `__wrapped__` chained back to it). The
    component is kept, running through that function; None for anything else."""
    if isinstance(value, Model) or not callable(value) or not hasattr(value, "__wrapped__"):
        return None
    inner = inspect.unwrap(value)
    if not isinstance(inner, Model):
        return None
    if not hasattr(inner, "use_compiled"):
        raise ValueError(f"fewstep does not run a compiled {type(inner).__name__}; compile the UNet, ControlNet or "
                         f"T2I-Adapter (pipe.unet = torch.compile(pipe.unet)) or the VAE's decode "
                         f"(pipe.vae.decode = torch.compile(pipe.vae.decode)).")
    return inner.use_compiled(value)


def load_tokenizer(folder: str, name: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(os.path.join(folder, name))


def load_scheduler(folder: str):
    """The folder's scheduler as a fewstep scheduler. fewstep samples in few steps, so a folder whose
    scheduler is neither TCD nor LCM (SD's PNDM, Euler, DDIM...) gets TCD with that folder's
    beta schedule and prediction type; its `.config` keeps what the folder said."""
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"The pipeline folder {folder!r} is missing scheduler/scheduler_config.json.")
    config = read_json_object(path, "the pipeline's scheduler config", "save the folder again with diffusers")
    cls = LCMScheduler if config.get("_class_name") == "LCMScheduler" else TCDScheduler
    if config.get("_class_name") not in ("TCDScheduler", "LCMScheduler"):
        logger.info("Scheduler %s in %s replaced by TCDScheduler with its config.", config.get("_class_name"), folder)
    return cls.from_config(config)


def load_components(folder: str, index: dict, names: Iterable[str], backend: str, dtype: str = "float32",
                    device: Optional[str] = None, variant: Optional[str] = None,
                    pipeline: str = "This pipeline") -> Dict[str, object]:
    """Load the named components of a pipeline folder (its model_index.json given as `index`);
    checks every one is present before loading any."""
    names = list(names)
    specs = {name: _component_spec(index, folder, name, pipeline) for name in names}
    for name in names:
        if name not in _TOKENIZERS and name != "scheduler":
            refuse_pickled_weights(os.path.join(folder, name))
    loaded = {}
    for name in names:
        library, class_name = specs[name]
        if name in _TOKENIZERS:
            loaded[name] = load_tokenizer(folder, name)
        elif name == "scheduler":
            loaded[name] = load_scheduler(folder)
        elif class_name in _MULTI:
            loaded[name] = [load_component(backend, name, library, _MULTI[class_name], path, dtype=dtype, device=device,
                                           variant=variant) for path in multi_folders(folder, name)]
        else:
            loaded[name] = load_component(backend, name, library, class_name, os.path.join(folder, name),
                                          dtype=dtype, device=device, variant=variant)
    return loaded
