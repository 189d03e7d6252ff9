"""Describing diffusers-format folders from their JSON files and safetensors headers: a pipeline folder
(model_index.json) and a model folder (config.json: ControlNet, T2I-Adapter, UNet, MotionAdapter, VAE,
a transformers text or image encoder)."""

from __future__ import annotations

import json
import os
from typing import Optional

from fewstep.info import families
from fewstep.info.weights import folder_weights, main_weights
from fewstep.pipelines import factory, loading

def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object.")
    return data


def model_class(config: dict) -> tuple:
    """(library, class name) a config.json names: diffusers' `_class_name`, transformers' `architectures`."""
    if config.get("_class_name"):
        return "diffusers", str(config["_class_name"])
    architectures = config.get("architectures") or []
    if architectures:
        return "transformers", str(architectures[0])
    return None, None


def _weights_entry(folder: str) -> dict:
    weights = folder_weights(folder)
    main = main_weights(weights)
    return {"dtype": main.get("dtype"), "parameters": main.get("parameters"), "files": main.get("files", []),
            "variants": {v: w["dtype"] for v, w in weights["variants"].items() if v},
            "pickled": weights["pickled"]}


def describe_component(folder: str, library: Optional[str], class_name: Optional[str]) -> dict:
    """One pipeline component: its library and class, and for a model its weights' dtype and variants."""
    entry = {"library": library, "class": class_name, "present": os.path.isdir(folder)}
    if entry["present"] and os.path.isfile(os.path.join(folder, "config.json")):
        entry.update(_weights_entry(folder))
    return entry


def _scheduler(folder: str) -> dict:
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return {"class": None, "prediction_type": None, "fewstep_scheduler": None}
    config = read_json(path)
    # what fewstep samples with: loading's own rule (TCD in place of any non-few-step scheduler)
    fewstep_scheduler = type(loading.load_scheduler(folder)).__name__
    return {"class": config.get("_class_name"), "prediction_type": config.get("prediction_type", "epsilon"),
            "fewstep_scheduler": fewstep_scheduler}


def describe_pipeline(folder: str, index: dict) -> dict:
    """A pipeline folder: diffusers' class and fewstep's, the model family, components, variants, scheduler."""
    class_name = index.get("_class_name")
    try:
        fewstep_class, note = factory.class_for_folder(index, folder).__name__, None
    except ValueError as err:  # a pipeline fewstep does not run: still describe the folder
        fewstep_class, note = None, str(err)
    components = {}
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2 or spec[1] is None:
            continue
        components[name] = describe_component(os.path.join(folder, name), spec[0], spec[1])
    scheduler = _scheduler(folder)
    family, why = None, "no unet"
    unet_config = os.path.join(folder, "unet", "config.json")
    if os.path.isfile(unet_config):
        family, why = families.pipeline_family(read_json(unet_config), scheduler["prediction_type"],
                                               "text_encoder" in components)
    variants = sorted({v for c in components.values() for v in c.get("variants", {})})
    return {"kind": "pipeline", "path": folder, "class": class_name, "fewstep_class": fewstep_class,
            "fewstep_note": note, "family": family, "family_name": families.family_name(family),
            "family_reason": why, "base": families.base_of(family), "components": components,
            "variants": variants, "scheduler": scheduler, "diffusers_version": index.get("_diffusers_version")}


def describe_model(folder: str, config: dict) -> dict:
    """A model folder (config.json + weights): class, dtype, variants and the base model it fits."""
    library, class_name = model_class(config)
    if class_name is None:
        raise ValueError(f"{os.path.join(folder, 'config.json')} names no model class (no _class_name or "
                         f"architectures); expected a diffusers or transformers model folder.")
    base, why = families.model_base(class_name, config)
    return {"kind": "model", "path": folder, "library": library, "class": class_name, **_weights_entry(folder),
            "base": base, "base_name": families.BASES.get(base), "base_reason": why}
