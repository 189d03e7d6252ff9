"""The original (LDM / SGM) module names of a diffusers UNet, derived from its config.

kohya files for SDXL (and some for SD 1.x) name UNet modules as Stability's code does:
`input_blocks.<i>.<j>`, `middle_block.<j>`, `output_blocks.<i>.<j>`, `time_embed`, `label_emb`, `out`.
The numbering follows the block layout, so it is computed from the same config the diffusers UNet
was built from rather than tabulated per model:

- input_blocks.0.0 is conv_in; then for each down level, one input block per layer holding the
  resnet (.0) and, in attention levels, the transformer (.1); then, except at the last level, one
  block whose .0.op is the downsampler's conv.
- middle_block.0 / .1 / .2: resnet, transformer, resnet (no transformer in an attention-free mid block).
- output_blocks: for each up level, layers_per_block + 1 blocks holding the resnet (.0), the
  transformer (.1) in attention levels, and in the last block of every level but the last the
  upsampler's conv, which sits after the transformer when there is one (.2.conv) and at .1.conv
  when there is not.

Inside a resnet the names differ (conv1 is in_layers.2, ...); inside a transformer they are the same.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


# the first part of every SGM module name (see _TOP and block_prefixes); no diffusers path starts with one
SGM_ROOTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")


def is_sgm_name(name: str) -> bool:
    """Whether a UNet module name, with "." or kohya's "_" between parts, is in the SGM/LDM naming."""
    return any(name.startswith(root) and name[len(root):len(root) + 1] in (".", "_") for root in SGM_ROOTS)


def _per_level(value, levels: int):
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def block_prefixes(config: Mapping) -> Dict[str, str]:
    """diffusers block prefix -> SGM prefix, e.g. "down_blocks.1.attentions.0" -> "input_blocks.4.1"."""
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    levels = len(down_types)
    layers = _per_level(config.get("layers_per_block", 2), levels)
    prefixes = {}
    index = 1
    for i, kind in enumerate(down_types):
        for j in range(layers[i]):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            if "Attn" in kind:
                prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:
        prefixes["mid_block.resnets.0"] = "middle_block.0"
        if "Attn" in mid:
            prefixes["mid_block.attentions.0"] = "middle_block.1"
            prefixes["mid_block.resnets.1"] = "middle_block.2"
        else:
            prefixes["mid_block.resnets.1"] = "middle_block.1"
    up_layers = list(reversed(layers))
    index = 0
    for i, kind in enumerate(up_types):
        attention = "Attn" in kind
        for j in range(up_layers[i] + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            if attention:
                prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            if j == up_layers[i] and i < len(up_types) - 1:
                prefixes[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index}.{2 if attention else 1}.conv"
            index += 1
    return prefixes


def sgm_paths(config: Mapping, paths: Iterable[str]) -> Dict[str, str]:
    """SGM path -> diffusers path for every given diffusers module path that has an SGM name."""
    prefixes = block_prefixes(config)
    out = {}
    for path in paths:
        if path in _TOP:
            out[_TOP[path]] = path
            continue
        parts = path.split(".")
        # the longest block prefix of this path (resnets, attentions: 4 parts; samplers: 5; mid: 3)
        for cut in (5, 4, 3):
            prefix = ".".join(parts[:cut])
            if prefix in prefixes and len(parts) >= cut:
                rest = parts[cut:]
                if ".resnets." in f".{prefix}.":
                    inner = ".".join(rest)
                    if inner not in _RESNET:
                        break
                    rest = _RESNET[inner].split(".")
                out[".".join([prefixes[prefix]] + rest)] = path
                break
    return out
