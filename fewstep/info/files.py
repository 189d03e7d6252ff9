"""Describing a single .safetensors file that is not a LoRA: a single-file checkpoint (A1111 / LDM / SGM
layout, through `fewstep.pipelines.checkpoint_family`) or an IP-Adapter weight file; and telling which
of those (or a LoRA) a file is from its keys."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from fewstep.core.lora.keys import parse_key, unsupported_kind
from fewstep.info.families import BASES, RELEASED_CROSS_DIMS
from fewstep.info.weights import summarise
from fewstep.pipelines import checkpoint_family

# top-level names of the original (LDM / SGM) checkpoint layouts
CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
IP_ADAPTER_PREFIXES = ("image_proj.", "ip_adapter.")


def file_kind(names) -> Optional[str]:
    """"checkpoint", "ip_adapter" or "lora" from a safetensors file's tensor names; None when none fits."""
    names = list(names)
    if any(n.startswith(CHECKPOINT_PREFIXES) for n in names):
        return "checkpoint"
    if names and all(n.startswith(IP_ADAPTER_PREFIXES) for n in names):
        return "ip_adapter"
    # LoRA variants fewstep does not read (LoHa, LoKr, DoRA) count too: describe_lora names them
    if any(parse_key(n) is not None or unsupported_kind(n) for n in names):
        return "lora"
    return None


def describe_checkpoint(path: str) -> dict:
    """A single-file checkpoint: its model family (checkpoint_family.detect_family), the fewstep pipeline
    for it, its weights' dtype, and the parts it holds."""
    family = checkpoint_family.detect_family(path)
    tensors = checkpoint_family.checkpoint_tensors(path)
    parts = Counter()
    # where each component sits depends on the family (the SDXL refiner's first embedder is OpenCLIP-G)
    prefixes = checkpoint_family.component_prefixes(family)
    for name in tensors:
        part = next((p for p, pre in prefixes.items() if name.startswith(pre)), None)
        if part:
            parts[part] += 1
    weights = summarise(tensors.values())
    return {"kind": "checkpoint", "path": path, "family": family.key, "family_name": family.name,
            "alternatives": list(family.alternatives), "base": family.key.split("-")[0],
            "fewstep_class": family.pipeline, "dtype": weights["dtype"], "dtypes": weights["dtypes"],
            "parameters": weights["parameters"], "parts": dict(sorted(parts.items()))}


def describe_ip_adapter(path: str, header) -> dict:
    """An IP-Adapter weight file (h94/IP-Adapter layout): plain or Plus, image tokens, widths, layers."""
    t = header.tensors
    plus = "image_proj.latents" in t
    if plus:  # Resampler: learned queries, projected out to the UNet's cross-attention width
        tokens = t["image_proj.latents"].shape[1]
        cross = t["image_proj.proj_out.weight"].shape[0] if "image_proj.proj_out.weight" in t else None
        embed = t["image_proj.proj_in.weight"].shape[1] if "image_proj.proj_in.weight" in t else None
    else:  # one Linear to tokens x cross-attention width, then a LayerNorm of that width
        cross = t["image_proj.norm.weight"].shape[0] if "image_proj.norm.weight" in t else None
        rows = t["image_proj.proj.weight"].shape if "image_proj.proj.weight" in t else None
        tokens = rows[0] // cross if rows and cross else None
        embed = rows[1] if rows else None
    layers = sum(1 for n in t if n.endswith(".to_k_ip.weight"))
    base = RELEASED_CROSS_DIMS.get(cross)
    weights = summarise(t.values())
    return {"kind": "ip_adapter", "path": path, "variant": "plus" if plus else "plain", "image_tokens": tokens,
            "cross_attention_dim": cross, "image_embed_dim": embed, "attention_layers": layers,
            "base": base, "base_name": BASES.get(base), "dtype": weights["dtype"],
            "parameters": weights["parameters"]}

