"""Check a LoRA against a model and bring it to one form: {component: {module path: LoraLayer}}.

`targets` describes the model: for each component ("unet", "text_encoder", "text_encoder_2"), the
weight shape of every module a LoRA may change (Linear: (out, in); Conv2d: (out, in, kh, kw)).
Names are resolved against that list, never guessed: a kohya name is looked up in a table of every
module path with "." turned into "_" (and, for the UNet, of every SGM name, see `sgm.py`), so a key
either names exactly one module of this model or is reported. Everything is checked here, before a
caller changes any weight: unknown keys, keys matching no module, missing factors, ranks, shapes, and
factors holding NaN or inf.

Alphas: a `.alpha` key wins; else diffusers' `lora_adapter_metadata` (PEFT's `lora_alpha` and
`alpha_pattern`, per component); else alpha = rank (scale 1), kohya's and PEFT's default.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from fewstep.core.lora.errors import LoraError
from fewstep.core.lora.fusion import LoraLayer
from fewstep.core.lora.keys import ALPHA, DOWN, UP, parse_key, unsupported_kind
from fewstep.core.lora.sgm import sgm_paths

Targets = Mapping[str, Mapping[str, Tuple[int, ...]]]
METADATA_KEY = "lora_adapter_metadata"  # where diffusers stores each component's PEFT LoraConfig


def _listing(keys, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def kohya_table(component: str, paths, unet_config: Optional[Mapping]) -> Dict[str, Optional[str]]:
    """kohya name ("." -> "_") -> module path; None marks a name two paths share (never resolved)."""
    table: Dict[str, Optional[str]] = {}

    def add(name, path):
        table[name] = path if table.get(name, path) == path else None

    for path in paths:
        add(path.replace(".", "_"), path)
    if component == "unet" and unet_config is not None:
        for sgm, path in sgm_paths(unet_config, paths).items():
            add(sgm.replace(".", "_"), path)
    return table


def component_config(metadata: Mapping[str, str], component: str, origin: str) -> dict:
    """One component's PEFT LoraConfig from diffusers' `lora_adapter_metadata` ({} when the file has none)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise LoraError(f"{origin}: its {METADATA_KEY} metadata is not valid JSON ({err}).") from err
    prefix = component + "."
    return {k[len(prefix):]: v for k, v in config.items() if isinstance(k, str) and k.startswith(prefix)}


def metadata_alpha(config: Mapping, path: str, rank: int) -> float:
    """The alpha of a module whose file has no `.alpha` key: PEFT's alpha_pattern, else its lora_alpha,
    else the rank (scale 1)."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
    return float(config.get("lora_alpha", rank) if alpha is None else alpha)


def _pattern_value(patterns: Mapping, path: str):
    # PEFT's rule for alpha_pattern keys: the key matches the end of the module path at a "." boundary
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


def _scalar(key: str, value: np.ndarray, origin: str) -> float:
    if value.size != 1:
        raise LoraError(f"{origin}: alpha {key!r} has shape {value.shape}; an alpha is one number.")
    alpha = float(value.reshape(-1)[0])
    if not np.isfinite(alpha):
        raise LoraError(f"{origin}: alpha {key!r} is {alpha}.")
    return alpha


def _check_finite(key: str, factor: np.ndarray, origin: str) -> None:
    """A factor holding NaN or inf is refused by key: fused, it makes the weight (and the image) NaN. One
    vectorised pass over the factor (LoRA factors are small next to the weights they change)."""
    if factor.dtype.kind in "fc" and not np.isfinite(factor).all():
        bad = int(factor.size - np.count_nonzero(np.isfinite(factor)))
        raise LoraError(f"{origin}: tensor {key!r} holds {bad} NaN or infinite value(s) of {factor.size}; the file is "
                        f"broken: download or export it again.")


def _check_shapes(component: str, path: str, keys, down: np.ndarray, up: np.ndarray,
                  weight: Tuple[int, ...], origin: str) -> None:
    where = f"{origin}: the LoRA for {component} module {path!r} ({keys[DOWN]!r})"
    if down.ndim not in (2, 4) or up.ndim not in (2, 4) or (up.ndim == 4 and up.shape[2:] != (1, 1)):
        raise LoraError(f"{where} has factors of shapes {down.shape} (down) and {up.shape} (up), which are not a LoRA.")
    if down.shape[0] != up.shape[1]:
        raise LoraError(f"{where}: down has rank {down.shape[0]} but up has rank {up.shape[1]}; the file is inconsistent.")
    kernel = tuple(weight[2:]) if len(weight) == 4 else (1, 1)
    down_kernel = tuple(down.shape[2:]) if down.ndim == 4 else (1, 1)
    if up.shape[0] != weight[0] or down.shape[1] != weight[1] or down_kernel != kernel:
        raise LoraError(
            f"{where} changes a weight of shape (out={up.shape[0]}, in={down.shape[1]}, kernel={down_kernel}) but the "
            f"module's weight is {tuple(weight)}: this LoRA does not fit this model (is it for another base model, "
            f"e.g. SD 1.5 vs SDXL?)."
        )


# Text encoders' module paths are the released names (`text_model.encoder.layers.0...`, see
# fewstep.backends.components_common.TransformersModel), which a LoRA saved with transformers 5 lacks.
RELEASED_TEXT_PREFIX = "text_model."


def normalise(tensors: Mapping[str, np.ndarray], targets: Targets, unet_config: Optional[Mapping] = None,
              metadata: Optional[Mapping[str, str]] = None, origin: str = "the LoRA") -> Dict[str, Dict[str, LoraLayer]]:
    """{component: {module path: LoraLayer}} for a LoRA state dict, checked against `targets`.

    Raises LoraError naming the key, module or component for anything that does not fit."""
    metadata = metadata or {}
    if not tensors:
        raise LoraError(f"{origin} holds no tensors.")
    unknown, foreign, unmatched = [], defaultdict(list), []
    parts: Dict[Tuple[str, str], Dict[str, str]] = defaultdict(dict)  # (component, path) -> part -> key
    file_names: Dict[Tuple[str, str], str] = {}  # (component, path) -> the module's name in the file, where another
    tables: Dict[str, Dict[str, Optional[str]]] = {}
    for key in tensors:
        parsed = parse_key(key)
        what = unsupported_kind(key)
        if parsed is None or what is not None:
            unknown.append(f"{key} ({what})" if what else key)
            continue
        if parsed.component not in targets:
            foreign[parsed.component].append(key)
            continue
        modules = targets[parsed.component]
        if parsed.kohya:
            if parsed.component not in tables:
                tables[parsed.component] = kohya_table(parsed.component, modules, unet_config)
            path = tables[parsed.component].get(parsed.names[0])
            if path is None:  # made from transformers 5's bare CLIPTextModel names (no `text_model_` level)
                path = tables[parsed.component].get(RELEASED_TEXT_PREFIX.replace(".", "_") + parsed.names[0])
        else:
            path = next((name for name in parsed.names if name in modules), None)
            if path is None:  # saved from transformers 5, whose CLIPTextModel has no `text_model.` level
                name = next((name for name in parsed.names if RELEASED_TEXT_PREFIX + name in modules), None)
                path = None if name is None else RELEASED_TEXT_PREFIX + name
                if name is not None:
                    file_names[(parsed.component, path)] = name  # what the file's alpha_pattern matches
        if path is None:
            unmatched.append(key)
            continue
        seen = parts[(parsed.component, path)]
        if parsed.part in seen:
            raise LoraError(f"{origin}: keys {seen[parsed.part]!r} and {key!r} both give the {parsed.part} of "
                            f"{parsed.component} module {path!r}.")
        seen[parsed.part] = key
    if unknown:
        raise LoraError(f"{origin}: keys that are not LoRA factors or alphas: {_listing(unknown)}. fewstep reads "
                        f"plain LoRA (diffusers/PEFT and kohya formats).")
    if foreign:
        component, keys = next(iter(foreign.items()))
        raise LoraError(f"{origin} has weights for the {component} ({_listing(keys)}), which this pipeline does not "
                        f"have: it is a LoRA for another kind of model.")
    if unmatched:
        raise LoraError(f"{origin}: keys that match no module of this model: {_listing(unmatched)}. The LoRA was "
                        f"probably made for another base model.")

    configs = {c: component_config(metadata, c, origin) for c in targets}
    for config in configs.values():
        if config.get("use_dora"):
            raise LoraError(f"{origin} is a DoRA adapter; fewstep fuses plain LoRA only.")
    layers: Dict[str, Dict[str, LoraLayer]] = defaultdict(dict)
    for (component, path), keys in parts.items():
        for needed in (DOWN, UP):
            if needed not in keys:
                have = next(iter(keys.values()))
                raise LoraError(f"{origin}: {component} module {path!r} has {have!r} but no {needed} factor.")
        down, up = tensors[keys[DOWN]], tensors[keys[UP]]
        _check_shapes(component, path, keys, down, up, tuple(targets[component][path]), origin)
        for part, factor in ((DOWN, down), (UP, up)):
            _check_finite(keys[part], factor, origin)
        config = configs[component]
        rank = int(down.shape[0])
        if ALPHA in keys:
            alpha = _scalar(keys[ALPHA], tensors[keys[ALPHA]], origin)
        else:
            alpha = metadata_alpha(config, file_names.get((component, path), path), rank)
        layers[component][path] = LoraLayer(down=down, up=up, alpha=float(alpha), rslora=bool(config.get("use_rslora")))
    return dict(layers)
