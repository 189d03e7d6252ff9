"""diffusers' parameter names -> the original single-file names (CompVis LDM for SD 1.x / 2.x, Stability's
SGM for SDXL), for writing test checkpoints. NumPy only.

Written from the two layouts, not from diffusers' converter; tests/test_single_file.py proves it by loading
the written file with diffusers' and mindone's `from_single_file` and comparing with the folder it came from.
The layouts, per component (L = layers_per_block):

UNet (`model.diffusion_model.`): `input_blocks` is conv_in, then per down block L (resnet, attention) slots
and one downsampler slot; `middle_block` is resnet, attention, resnet; `output_blocks` holds L + 1 slots per
up block, the last also carrying the upsampler (after the attention, when the block has one). A resnet's
norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut are in_layers.0/in_layers.2/emb_layers.1/out_layers.0/
out_layers.3/skip_connection; attention (Transformer2D) names are the same in both.

VAE (`first_stage_model.`): down_blocks -> down.i.block.j / down.i.downsample; decoder up blocks are stored
in reverse order (up.{n-1-i}); the mid attention's group_norm/to_q/to_k/to_v/to_out.0 are norm/q/k/v/proj_out
and are 1x1 convolutions there.

CLIP ViT-L (`cond_stage_model.transformer.` in SD 1.x, `conditioner.embedders.0.transformer.` in SDXL): the
transformers names behind a prefix. OpenCLIP (`cond_stage_model.model.` in SD 2.x,
`conditioner.embedders.1.model.` in SDXL): resblocks with q/k/v fused into in_proj, and the projection
stored as a matrix (hidden, projection) rather than a Linear weight.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

import numpy as np

Arrays = Dict[str, np.ndarray]

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    part, tail = rest.split(".", 1)
    return f"{_RESNET[part]}.{tail}"


def unet_to_ldm(state: Arrays, config: dict) -> Arrays:
    """A diffusers UNet2DConditionModel state dict in LDM names (without the `model.diffusion_model.` prefix)."""
    slots = config["layers_per_block"] + 1
    with_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out = {}
    for name, value in state.items():
        top, _, param = name.rpartition(".")
        if top in _UNET_TOP:
            out[f"{_UNET_TOP[top]}.{param}"] = value
            continue
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", name)
        if m:
            side, block, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            slot = f"input_blocks.{1 + block * slots + j}" if side == "down" else f"output_blocks.{block * slots + j}"
            if kind == "resnets":
                new = f"{slot}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"{slot}.1.{rest}"
            elif kind == "downsamplers":  # its own slot after the block's layers; conv.* is op.*
                new = f"input_blocks.{(block + 1) * slots}.0.op.{rest[len('conv.'):]}"
            else:  # the upsampler rides in the block's last slot, after its attention when it has one
                new = f"output_blocks.{block * slots + slots - 1}.{2 if with_attention[block] else 1}.{rest}"
            out[new] = value
            continue
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
        if not m:
            raise ValueError(f"No LDM name for UNet parameter {name!r}.")
        kind, k, rest = m.group(1), int(m.group(2)), m.group(3)
        out[f"middle_block.{2 * k}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"] = value
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state: Arrays, config: dict) -> Arrays:
    """A diffusers AutoencoderKL state dict in LDM names (without the `first_stage_model.` prefix)."""
    n = len(config["up_block_types"])
    out = {}
    for name, value in state.items():
        new = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",  # stored in reverse order
                     lambda m: f"decoder.up.{n - 1 - int(m.group(1))}."
                               f"{'block' if m.group(2) == 'resnets' else 'upsample'}.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new)
        if m:
            new = f"{m.group(1)}.mid.attn_1.{_VAE_ATTENTION[m.group(2)]}.{m.group(3)}"
            if value.ndim == 2:  # Linear in diffusers, a 1x1 convolution in LDM
                value = value[:, :, None, None]
        out[new] = value
    return out


def clip_to_ldm(state: Arrays) -> Arrays:
    """CLIP ViT-L (transformers' CLIPTextModel): the same names, which the caller prefixes."""
    return dict(state)


_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_to_ldm(state: Arrays) -> Arrays:
    """An OpenCLIP text tower (transformers' CLIPTextModel / ...WithProjection) in OpenCLIP names."""
    out = {}
    fused: Dict[str, Dict[str, np.ndarray]] = {}
    for name, value in state.items():
        if name in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[name]] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.T  # x @ P with P (hidden, projection)
        elif name.endswith("position_ids"):
            continue  # a buffer transformers may save; OpenCLIP has none
        else:
            m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", name)
            if not m:
                raise ValueError(f"No OpenCLIP name for text encoder parameter {name!r}.")
            layer, module, param = m.groups()
            q = re.match(r"self_attn\.([qkv])_proj$", module)
            if q:  # q, k, v fused in one in_proj, in that order
                fused.setdefault(f"transformer.resblocks.{layer}.attn.in_proj_{param}", {})[q.group(1)] = value
            else:
                out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    for name, parts in fused.items():
        out[name] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def released_clip_names(state: Arrays) -> Arrays:
    """A CLIP text encoder's weights under the names the released checkpoints use: transformers 5 saves
    CLIPTextModel's without the `text_model.` prefix that 4.x and every published file have."""
    return {name if name.startswith("text_model.") or name.startswith("text_projection.") else "text_model." + name:
            value for name, value in state.items()}


def prefixed(prefix: str, state: Arrays) -> Arrays:
    return {prefix + name: value for name, value in state.items()}


def checkpoint(unet: Arrays, unet_config: dict, vae: Arrays, vae_config: dict, text: Arrays,
               text_2: Optional[Arrays] = None, open_clip: bool = False) -> Arrays:
    """One single-file state dict from a pipeline's diffusers-named state dicts: SGM names when `text_2` (SDXL's
    OpenCLIP bigG) is given, else LDM with the text encoder as CLIP ViT-L (SD 1.x) or OpenCLIP (`open_clip`,
    SD 2.x). Arrays are renamed, transposed or reshaped as views, so any array type with `.T`, `.ndim`, indexing
and `np.concatenate` support will do; a writer makes them contiguous."""
    text = released_clip_names(text)
    text_2 = released_clip_names(text_2) if text_2 is not None else None
    state = {**prefixed("model.diffusion_model.", unet_to_ldm(unet, unet_config)),
             **prefixed("first_stage_model.", vae_to_ldm(vae, vae_config))}
    if text_2 is not None:
        state.update(prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(text)))
        state.update(prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(text_2)))
    elif open_clip:
        state.update(prefixed("cond_stage_model.model.", open_clip_to_ldm(text)))
    else:
        state.update(prefixed("cond_stage_model.transformer.", clip_to_ldm(text)))
    return state
