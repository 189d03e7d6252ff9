"""The modules a LoRA may change in a model folder, from its safetensors headers: what a loaded
component's `lora_targets()` gives (the weight shape of every Linear and Conv2d, by module path), without
loading the model or importing a framework."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from fewstep.core.lora import read_header
from fewstep.info.families import model_base
from fewstep.info.folders import describe_pipeline, model_class, read_json
from fewstep.info.weights import folder_weights, main_weights
from fewstep.pipelines import loading
from fewstep.pipelines.lora import LORA_COMPONENTS

# model folders a LoRA's "unet" keys can be placed on: the UNet, and AnimateDiff's motion modules (whose
# paths in the motion UNet are the adapter's own)
_UNET_CLASSES = ("UNet2DConditionModel", "UNetMotionModel", "MotionAdapter")


def module_shapes(folder: str) -> Dict[str, Tuple[int, ...]]:
    """module path -> weight shape of the Linear (2-D) and Conv2d (4-D) weights in a component folder.
    Embedding tables are 2-D too; their modules are named *embedding (CLIP's token_embedding,
    position_embedding; a UNet's class_embedding), which no LoRA changes."""
    weights = main_weights(folder_weights(folder))
    shapes = {}
    for name in weights.get("files", []):
        for key, entry in read_header(os.path.join(folder, name)).tensors.items():
            module = key[: -len(".weight")]
            if key.endswith(".weight") and len(entry.shape) in (2, 4) and not module.endswith("embedding"):
                shapes[module] = tuple(entry.shape)
    return shapes


def model_targets(base: str) -> Tuple[dict, Optional[dict], dict]:
    """(targets, unet config, about) for `base`: a pipeline folder (its unet and text encoders), or a
    UNet or MotionAdapter folder (as the "unet"); a hub id is resolved through huggingface_hub."""
    folder = loading.resolve_folder(base, what="a pipeline folder, or a UNet or MotionAdapter folder, as base=")
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        index = loading.read_model_index(folder)
        targets = {c: module_shapes(os.path.join(folder, c)) for c in LORA_COMPONENTS
                   if isinstance(index.get(c), (list, tuple)) and index[c][0] is not None
                   and os.path.isdir(os.path.join(folder, c))}
        config_path = os.path.join(folder, "unet", "config.json")
        unet_config = read_json(config_path) if os.path.isfile(config_path) else None
        family = describe_pipeline(folder, index)["family"]
        return targets, unet_config, {"base": folder, "base_class": index.get("_class_name"), "base_family": family}
    config_path = os.path.join(folder, "config.json")
    class_name = model_class(read_json(config_path))[1] if os.path.isfile(config_path) else None
    if class_name not in _UNET_CLASSES:
        raise ValueError(f"base={base!r} is {'a ' + class_name if class_name else 'not a model folder'}; a LoRA is "
                         f"checked against a pipeline folder (model_index.json) or a UNet or MotionAdapter folder.")
    config = read_json(config_path)
    unet_config = config if class_name != "MotionAdapter" else None
    about = {"base": folder, "base_class": class_name, "base_family": model_base(class_name, config)[0]}
    return {"unet": module_shapes(folder)}, unet_config, about
