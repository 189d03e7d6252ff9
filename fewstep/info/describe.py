"""`describe(path_or_id)`: what a folder, hub repository or file is, as a JSON-serialisable dict.

Which describer runs is decided from what is on disk: model_index.json makes a pipeline folder,
config.json a model folder, a .safetensors file is a checkpoint, an IP-Adapter or a LoRA by its keys,
and a folder holding only weight files (a LoRA or IP-Adapter repository) is described file by file.
Nothing is loaded: headers and JSON files only, no framework imported, no pickle opened.
"""

from __future__ import annotations

import os
from typing import Optional

from fewstep.core.lora import DEFAULT_WEIGHT_NAME, LoraError, read_header
from fewstep.info.files import describe_checkpoint, describe_ip_adapter, file_kind
from fewstep.info.folders import describe_model, describe_pipeline, read_json
from fewstep.info.lora import describe_lora
from fewstep.pipelines import checkpoint_family, loading

EXPECTED = ("a diffusers pipeline folder (model_index.json), a diffusers model folder (config.json: ControlNet, "
            "T2I-Adapter, UNet, MotionAdapter...), a .safetensors LoRA, single-file checkpoint or IP-Adapter "
            "file, a folder holding one, or a hub id of any of these")
_FILE_SUFFIXES = (".safetensors",) + checkpoint_family.PICKLE_SUFFIXES
_MAX_DEPTH = 2  # how deep a repository of weight files is searched (h94/IP-Adapter: models/image_encoder)


def describe(path_or_id, weight_name: Optional[str] = None, base=None) -> dict:
    """What `path_or_id` is, as a JSON-serialisable dict whose "kind" says which keys follow.

    Args:
        path_or_id: a folder, a file, or a hub id (resolved through huggingface_hub's cache; HF_HUB_OFFLINE
            and HF_ENDPOINT apply): see EXPECTED.
        weight_name: the file to describe inside a folder or repository holding several.
        base: for a LoRA, a pipeline folder (or UNet / MotionAdapter folder, or hub id) to check it
            against: `base_check` then says whether fewstep's loader places it there, and how many modules.

    Returns:
        A dict with "kind" one of "pipeline", "model", "lora", "checkpoint", "ip_adapter", "repository",
        and "path". Raises ValueError saying what was expected for anything else.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise ValueError(f"Expected a path or hub id, got a {type(path_or_id).__name__}; pass {EXPECTED}.")
    path = os.fspath(path_or_id)
    return with_recipe(_describe(path, weight_name, base), path, weight_name)


def with_recipe(found: dict, source: str, weight_name: Optional[str] = None) -> dict:
    """`found` with "recipe": the sampler settings of a published few-step model (fewstep.recipes), when its
    file name or hub id is a known one (the name alone decides); a repository's items each get theirs."""
    from fewstep import recipes

    if found.get("kind") == "repository":
        found["items"] = [with_recipe(item, item.get("path") or item.get("name", "")) for item in found["items"]]
        return found
    pick = (recipes.recipe_for(found["path"]) if found.get("path") else None) or recipes.recipe_for(source, weight_name)
    if pick is not None:
        plan = recipes.plan(pick.spec, pick.steps)
        found["recipe"] = {"name": pick.spec, "steps": pick.steps, "settings": plan.summary(),
                           "card": recipes.get(pick.recipe).card}
    return found


def _describe(path: str, weight_name: Optional[str], base) -> dict:
    if os.path.isfile(path):
        if weight_name:
            raise ValueError(f"{path!r} is a file; weight_name= chooses a file inside a folder or hub repository.")
        return describe_file(path, base)
    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.endswith(_FILE_SUFFIXES)):
        raise ValueError(f"{path!r} does not exist; pass {EXPECTED}.")
    folder = loading.resolve_folder(path, what=EXPECTED)
    if weight_name:
        chosen = os.path.join(folder, weight_name)
        if not os.path.isfile(chosen):
            raise ValueError(f"{path!r} has no file {weight_name!r}.")
        return describe_file(chosen, base)
    return describe_folder(folder, base)


def describe_file(path: str, base=None) -> dict:
    """A single file: a LoRA, a single-file checkpoint or an IP-Adapter (by its keys); pickles are refused."""
    checkpoint_family.refuse_pickle(path)
    try:
        header = read_header(path)
    except LoraError as err:
        raise ValueError(f"{path} is not a safetensors file fewstep can read ({err}). Expected {EXPECTED}.") from err
    kind = file_kind(header.tensors)
    if kind is None:
        hint = (" It is one component's weights: pass its folder (with config.json)."
                if os.path.isfile(os.path.join(os.path.dirname(path), "config.json")) else "")
        raise ValueError(f"{path} holds {len(header.tensors)} tensors (e.g. {sorted(header.tensors)[:3]}) that are "
                         f"not a LoRA, a single-file checkpoint or an IP-Adapter.{hint} Expected {EXPECTED}.")
    if base is not None and kind != "lora":
        raise ValueError(f"base= checks a LoRA against a model; {path} is a {kind.replace('_', '-')} file.")
    if kind == "checkpoint":
        return describe_checkpoint(path)
    if kind == "ip_adapter":
        return describe_ip_adapter(path, header)
    return describe_lora(path, base)


def describe_folder(folder: str, base=None) -> dict:
    """A folder: pipeline (model_index.json), model (config.json), or a folder of weight files."""
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        found = describe_pipeline(folder, loading.read_model_index(folder))
    elif os.path.isfile(os.path.join(folder, "config.json")):
        found = describe_model(folder, read_json(os.path.join(folder, "config.json")))
    else:
        top = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
        if len(top) == 1 or DEFAULT_WEIGHT_NAME in top:  # a LoRA folder, as load_lora_weights picks its file
            return describe_file(os.path.join(folder, DEFAULT_WEIGHT_NAME if DEFAULT_WEIGHT_NAME in top else top[0]),
                                 base)
        return describe_repository(folder, base)
    if base is not None:
        raise ValueError(f"base= checks a LoRA against a model; {folder} is a {found['kind']} folder.")
    return found


def describe_repository(folder: str, base=None) -> dict:
    """A folder of weight files and model folders (a LoRA or IP-Adapter repository): each described."""
    if base is not None:
        raise ValueError(f"{folder} holds several weight files; choose the LoRA to check with weight_name=.")
    items = []
    for root, dirs, files in os.walk(folder):
        depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < _MAX_DEPTH)
        if root != folder and os.path.isfile(os.path.join(root, "config.json")):
            dirs[:] = []  # a model folder: described as one
            try:
                items.append(dict(describe_model(root, read_json(os.path.join(root, "config.json"))),
                                  name=os.path.relpath(root, folder)))
            except ValueError as err:
                items.append({"kind": "unknown", "name": os.path.relpath(root, folder), "error": str(err)})
            continue
        for name in sorted(files):
            if not name.endswith(_FILE_SUFFIXES):
                continue
            path = os.path.join(root, name)
            try:
                item = describe_file(path)
            except ValueError as err:  # one unreadable file does not hide the rest
                item = {"kind": "unknown", "path": path, "error": str(err)}
            items.append(dict(item, name=os.path.relpath(path, folder)))
    if not items:
        raise ValueError(f"{folder} holds no model_index.json, config.json or weight files; expected {EXPECTED}.")
    return {"kind": "repository", "path": folder, "items": items}
