"""Describing a LoRA file: its format, ranks, alphas, the components and modules it touches, conv layers,
and the base model it fits; read from the safetensors header plus its alpha scalars (never its factors).

Keys are split by the LoRA loader's own parser (`fewstep.core.lora.keys`), so a key this module counts
is a key the loader reads. Without a model a key cannot be resolved to a module, so modules are counted
by their down factors (each module has exactly one), and an alpha key is matched to its module by the
names both carry.

Which base model a file fits is decided from the structure it carries, because the widths of the tiny
test models match no release: SDXL signs are a second text encoder, the added (text_time) embedding, and
transformers deeper than one block; SD 1.x/2.x signs are attention in the UNet's first level (SDXL has
none there); SD 2.x projects into its transformers with Linear layers where SD 1.x uses 1x1 convs. The
released widths (cross-attention 768 / 1024 / 2048, text encoder 1024 for SD 2.x) count as signs too.
`base_check` then places the file on a given model with the loader's own `normalise`, which is the
check `load_lora_weights` makes before it changes any weight.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

from fewstep.core.lora import LoraError, normalise, read_header, read_lora, read_safetensors
from fewstep.core.lora.keys import (ALPHA, DOWN, FORMAT_NAMES, KOHYA, KOHYA_SGM, UP, key_format, parse_key,
                                   unsupported_kind)
from fewstep.core.lora.normalise import component_config, metadata_alpha
from fewstep.info.families import BASES, RELEASED_CROSS_DIMS
from fewstep.info.weights import summarise

_XL_SIGNS = ((re.compile(r"(^|[._])(add_embedding|label_emb)([._]|$)"), "added (text_time) embedding"),
             (re.compile(r"transformer_blocks[._][1-9]"), "transformers deeper than one block"))
_SD_SIGNS = ((re.compile(r"^(down_blocks[._]0[._]attentions|input_blocks[._][12][._]1)([._]|$)"),
              "attention in the UNet's first level"),)
_CROSS_KEY = re.compile(r"attn2[._]to_k$")
_PROJ_IN = re.compile(r"(^|[._])proj_in$")
_TE_QUERY = re.compile(r"q_proj$")


def _most_common(counter: Counter):
    return counter.most_common(1)[0][0] if counter else None


def _sorted_values(counter: Counter) -> list:
    return sorted(counter)


def _modules(header, path: str):
    """(modules, formats, unrecognised, unsupported): one entry per down factor, with its component, the
    names it may have, shape and alpha (alpha keys read as scalars; the factors are not read)."""
    parsed, unrecognised, unsupported = [], [], Counter()
    for key in header.tensors:
        what = unsupported_kind(key)
        p = parse_key(key)
        if what is not None:
            unsupported[what] += 1
        elif p is None:
            unrecognised.append(key)
        else:
            parsed.append(p)
    alpha_keys = [p.key for p in parsed if p.part == ALPHA]
    alpha_values = read_safetensors(path, names=alpha_keys)[0] if alpha_keys else {}
    alphas: Dict[Tuple[str, str], float] = {}
    for p in parsed:
        if p.part == ALPHA and alpha_values[p.key].size == 1:
            for name in p.names:
                alphas[(p.component, name)] = float(alpha_values[p.key].reshape(-1)[0])
    configs = {c: component_config(header.metadata, c, path) for c in {p.component for p in parsed}}
    modules = []
    for p in parsed:
        if p.part != DOWN:
            continue
        shape = header.tensors[p.key].shape
        rank = int(shape[0]) if shape else 0
        alpha = next((alphas[(p.component, n)] for n in p.names if (p.component, n) in alphas), None)
        if alpha is not None:
            source = "per-module"
        else:
            config = configs[p.component]
            source = "metadata" if "lora_alpha" in config or config.get("alpha_pattern") else "default"
            alpha = metadata_alpha(config, p.names[0], rank)
        modules.append(dict(component=p.component, name=p.names[0], shape=tuple(shape), rank=rank, alpha=alpha,
                            alpha_source=source))
    formats = Counter(key_format(p) for p in parsed)
    if formats[KOHYA_SGM] and all(p.component != "unet" for p in parsed if key_format(p) == KOHYA):
        # text-encoder names are the same in both kohya namings: the UNet's names decide
        formats[KOHYA_SGM] += formats.pop(KOHYA, 0)
    ups = Counter(p.component for p in parsed if p.part == UP)
    downs = Counter(m["component"] for m in modules)
    unpaired = sorted(c for c in set(ups) | set(downs) if ups[c] != downs[c])
    return modules, formats, unrecognised, unsupported, unpaired


def structural_base(modules: List[dict]) -> dict:
    """{base, name, evidence, cross_attention_dim, motion}: the base model a LoRA's modules fit (see the
    module docstring); base is None when the signs are missing or disagree."""
    xl, sd, sd15, sd21, evidence = [], [], [], [], []
    cross = None
    motion = any("motion_modules" in m["name"] for m in modules)
    for m in modules:
        name, shape = m["name"], m["shape"]
        if m["component"] == "text_encoder_2":
            xl.append("keys for a second text encoder (text_encoder_2)")
        elif m["component"] == "text_encoder" and _TE_QUERY.search(name) and len(shape) == 2 and shape[1] == 1024:
            sd21.append("text encoder width 1024 (OpenCLIP ViT-H)")
        if m["component"] != "unet" or "motion_modules" in name:
            continue
        xl += [what for pattern, what in _XL_SIGNS if pattern.search(name)]
        sd += [what for pattern, what in _SD_SIGNS if pattern.search(name)]
        if _CROSS_KEY.search(name) and len(shape) == 2:
            cross = int(shape[1])
        if _PROJ_IN.search(name):
            (sd21 if len(shape) == 2 else sd15).append(
                "Linear transformer projections" if len(shape) == 2 else "1x1-conv transformer projections")
    if cross in RELEASED_CROSS_DIMS:
        {"sd15": sd15, "sd21": sd21, "sdxl": xl}[RELEASED_CROSS_DIMS[cross]].append(f"cross-attention dim {cross}")
    if motion:
        sd15.append("AnimateDiff motion modules")
    evidence = sorted(set(xl) | set(sd) | set(sd15) | set(sd21))
    if xl and (sd or sd15):
        base = None
        evidence.append("conflicting signs")
    elif xl:
        base = "sdxl"
    elif sd15 and sd21:
        base = "sd"
    elif sd15:
        base = "sd15"
    elif sd21:
        # Linear projections alone are SD 2.x's or SDXL's; SDXL signs were looked for above
        base = "sd21" if sd or any(m["component"] == "text_encoder" for m in modules) else None
    else:
        base = "sd" if sd else None
    return {"base": base, "name": BASES.get(base), "evidence": evidence, "cross_attention_dim": cross,
            "motion": motion}


def _summary(modules: List[dict]) -> dict:
    ranks, alphas = Counter(m["rank"] for m in modules), Counter(m["alpha"] for m in modules)
    return {"modules": len(modules), "conv_modules": sum(len(m["shape"]) == 4 for m in modules),
            "rank": _most_common(ranks), "ranks": _sorted_values(ranks),
            "alpha": _most_common(alphas), "alphas": _sorted_values(alphas)}


def describe_lora(path: str, base: Optional[str] = None) -> dict:
    """A LoRA .safetensors file (see the module docstring); with `base` (a folder), whether it places there."""
    header = read_header(path)
    modules, formats, unrecognised, unsupported, unpaired = _modules(header, path)
    if not modules and unsupported:
        raise ValueError(f"{path} is a {', '.join(unsupported)} file, not a plain LoRA; fewstep reads plain LoRA only "
                         f"(diffusers/PEFT and kohya formats).")
    if not modules:
        raise ValueError(f"{path} holds no LoRA factors (keys like {sorted(header.tensors)[:3]}); expected a LoRA in "
                         f"the diffusers/PEFT or kohya format.")
    by_component = defaultdict(list)
    for m in modules:
        by_component[m["component"]].append(m)
    fmt = next(iter(formats)) if len(formats) == 1 else "mixed"
    sources = Counter(m["alpha_source"] for m in modules)
    weights = summarise(header.tensors.values())
    out = {"kind": "lora", "path": path, "format": fmt,
           "format_name": FORMAT_NAMES.get(fmt, "mixed: " + ", ".join(FORMAT_NAMES[f] for f in sorted(formats))),
           "formats": dict(sorted(formats.items())), **_summary(modules),
           "alpha_source": next(iter(sources)) if len(sources) == 1 else "mixed",
           "alpha_sources": dict(sorted(sources.items())),
           "components": {c: _summary(ms) for c, ms in sorted(by_component.items())},
           "conv": any(len(m["shape"]) == 4 for m in modules), "dtype": weights["dtype"],
           "parameters": weights["parameters"], "fits": structural_base(modules),
           "unrecognised_keys": unrecognised[:5], "unrecognised_count": len(unrecognised),
           "unsupported": dict(sorted(unsupported.items())), "unpaired_components": unpaired,
           "metadata_keys": sorted(header.metadata)}
    out["base_check"] = base_check(path, base) if base is not None else None
    return out


def base_check(path: str, base: str) -> dict:
    """Whether the LoRA at `path` places on the model folder `base`: the loader's `normalise` against the
    folder's module list (read from its safetensors headers)."""
    from fewstep.info.targets import model_targets

    targets, unet_config, about = model_targets(base)
    source = read_lora(path)
    try:
        layers = normalise(source.tensors, targets, unet_config=unet_config, metadata=source.metadata,
                           origin=os.path.basename(path))
    except LoraError as err:
        return {**about, "fits": False, "placed": {}, "error": str(err)}
    return {**about, "fits": True, "placed": {c: len(p) for c, p in sorted(layers.items())}, "error": None}
