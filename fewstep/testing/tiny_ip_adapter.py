"""Tiny random-weight IP-Adapters laid out like the h94/IP-Adapter hub repository, built offline.

`tiny_ip_adapter(kind)` writes one folder per kind and returns it; diffusers' (and mindone.diffusers')
`pipe.load_ip_adapter(folder, subfolder=SUB, weight_name=NAME)` loads it unchanged on the tiny pipeline
of that kind (`tiny_pipeline(kind)`), with (SUB, NAME) from `IP_ADAPTER_FILES`:

    sd15:  models/image_encoder/                  CLIPVisionModelWithProjection + CLIPImageProcessor
           models/ip-adapter_sd15.safetensors          plain ("ImageProjection", 4 tokens)
           models/ip-adapter-plus_sd15.safetensors     Plus (Resampler, 16 tokens)
    sdxl:  sdxl_models/image_encoder/             as above (the encoder both sdxl files use)
           sdxl_models/ip-adapter_sdxl.safetensors     plain
           sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors   Plus
           models/image_encoder/                  a byte-identical copy of sdxl_models/image_encoder

Image encoders. diffusers loads `<subfolder>/image_encoder` unless `image_encoder_folder=` names
another one (a name with a "/" is taken from the repository root). In the real repository the two
SDXL files need different encoders (ip-adapter_sdxl: ViT-bigG in sdxl_models/image_encoder;
ip-adapter-plus_sdxl_vit-h: ViT-H in models/image_encoder, passed as
`image_encoder_folder="models/image_encoder"` or loaded by the user, as diffusers' guides do). Here
each kind has one encoder that every file of that kind fits, so the default lookup works for all of
them; the SDXL folder also holds a copy at models/image_encoder so that the guides' spelling works too.
The folder's CLIPImageProcessor is what diffusers' load_ip_adapter creates when the pipeline has no
feature extractor (`CLIPImageProcessor(size=image_size, crop_size=image_size)`, here 32 px); it is
saved so that a user who loads it explicitly gets the same preprocessing.

Weight files (float32 safetensors, keys as in the released files, which diffusers converts on load):
- plain: `image_proj.proj.weight` [4 * cross_attention_dim, projection_dim], `image_proj.proj.bias`,
  `image_proj.norm.weight/bias` [cross_attention_dim];
- Plus: the original IP-Adapter `Resampler` layout: `image_proj.latents` [1, num_queries, dim],
  `image_proj.proj_in.*` [dim, encoder hidden_size] (it reads the encoder's penultimate hidden states),
  `image_proj.proj_out.*` [cross_attention_dim, dim], `image_proj.norm_out.*`, and per layer i (0-3)
  `image_proj.layers.{i}.0.{norm1,norm2}.*`, `.0.to_q.weight` [heads * 64, dim], `.0.to_kv.weight`
  [2 * heads * 64, dim], `.0.to_out.weight` [dim, heads * 64], `.1.0.*` (LayerNorm), `.1.1.weight`
  [4 * dim, dim], `.1.3.weight` [dim, 4 * dim]. diffusers' converter fixes depth 4 and dim_head 64 (it
  reads heads as to_q rows // 64), so those two are not shrunk; dim and heads are.
- both: `ip_adapter.{k}.to_k_ip.weight` and `.to_v_ip.weight` [hidden size of the block,
  cross_attention_dim], k = 1, 3, 5, ... for each cross-attention (attn2) processor in
  `unet.attn_processors` order of the tiny UNet (diffusers counts all processors, attn1 even, attn2 odd).

Randomness: everything is drawn after one `torch.manual_seed(seed)` inside `torch.random.fork_rng`
(the caller's RNG is left alone), in a fixed order: encoder, plain projection and its to_k_ip/to_v_ip,
Plus projection and its. The encoder's and projections' all-zero tensors (biases, LayerNorm shifts)
are redrawn (normal, std 0.1, as in tiny_adapters) so a port that drops a bias shows; to_k_ip/to_v_ip
are drawn with std IP_STD (0.2), large enough that the image visibly changes with the adapter's scale.

Only torch, diffusers, transformers and safetensors are used, imported lazily inside functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from fewstep.testing.tiny_models import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from fewstep.testing.tiny_models import TEXT_HIDDEN, XL_TEXT2_HIDDEN, cached_folder, default_cache_dir, tiny_pipeline

# Bump whenever a config, a layout or a randomisation below changes (cached folders are then rebuilt).
# The ip_adapter keys follow the tiny UNets' processors, so the marker also records tiny_models' version.
FORMAT_VERSION = 1

IP_ADAPTER_KINDS = ("sd15", "sdxl")

# kind -> variant -> (subfolder, weight_name), as `load_ip_adapter(folder, subfolder=, weight_name=)` takes them.
IP_ADAPTER_FILES = {
    "sd15": {"plain": ("models", "ip-adapter_sd15.safetensors"),
             "plus": ("models", "ip-adapter-plus_sd15.safetensors")},
    "sdxl": {"plain": ("sdxl_models", "ip-adapter_sdxl.safetensors"),
             "plus": ("sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors")},
}
# kind -> the image encoder folders (relative to the adapter folder); the first is the default lookup
# `<subfolder>/image_encoder`, any further one is an identical copy (see the module docstring).
IP_ADAPTER_IMAGE_ENCODERS = {
    "sd15": ("models/image_encoder",),
    "sdxl": ("sdxl_models/image_encoder", "models/image_encoder"),
}

IP_IMAGE_SIZE = 32  # the encoder's image_size; diffusers' created CLIPImageProcessor resizes/crops to it
# Tiny CLIP vision encoders: hidden_size and projection_dim differ from each other and from the UNets'
# cross_attention_dim (sd15 32, sdxl 80), so a projection wired to the wrong one fails on shapes.
IP_ENCODER_CONFIGS = {
    "sd15": dict(hidden_size=48, projection_dim=24),
    "sdxl": dict(hidden_size=64, projection_dim=36),
}
_ENCODER_COMMON = dict(intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=IP_IMAGE_SIZE,
                       patch_size=8, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5)
CROSS_ATTENTION_DIM = {"sd15": TEXT_HIDDEN, "sdxl": TEXT_HIDDEN + XL_TEXT2_HIDDEN}
PLAIN_NUM_TOKENS = 4  # diffusers builds ImageProjection with 4 tokens whatever the file holds
# The Plus Resampler (diffusers' IPAdapterPlusImageProjection): dim 40 with 2 heads of 64, 16 queries.
PLUS_CONFIG = dict(hidden_dims=40, heads=2, num_queries=16, depth=4, dim_head=64, ffn_ratio=4)

IP_STD = 0.2  # to_k_ip / to_v_ip
RANDOMISED_STD = 0.1  # all-zero tensors of the encoder and the projections

PathLike = Optional[Union[str, os.PathLike]]


def tiny_ip_adapter(kind: str = "sd15", seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny IP-Adapter folder (h94/IP-Adapter layout) for the tiny `kind` pipeline.

    kind: "sd15" or "sdxl". Load a file with
    `pipe.load_ip_adapter(folder, subfolder=sub, weight_name=name)`, `(sub, name) =
    IP_ADAPTER_FILES[kind]["plain" | "plus"]`; both files of a kind fit the encoder at
    `<sub>/image_encoder`, so several may be loaded at once (lists of weight names).
    path: default `<cache>/ip-adapter-<kind>-<seed>` (see `default_cache_dir`).
    """
    if kind not in IP_ADAPTER_FILES:
        raise ValueError(f"Unknown tiny IP-Adapter kind {kind!r}; choose one of {', '.join(IP_ADAPTER_KINDS)}.")
    seed = int(seed)
    name = f"ip-adapter-{kind}"
    wanted = {"kind": name, "seed": seed, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}
    target = Path(path) if path is not None else default_cache_dir() / f"{name}-{seed}"
    return cached_folder(target, wanted, lambda staging: _write(kind, seed, staging), what="tiny IP-Adapter")


def _write(kind: str, seed: int, staging: Path) -> None:
    import diffusers
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet_config = diffusers.UNet2DConditionModel.load_config(tiny_pipeline(kind), subfolder="unet")
    with torch.random.fork_rng(devices=[]):
        unet = diffusers.UNet2DConditionModel.from_config(unet_config)  # only its processor names are read
        hidden_sizes = _cross_attention_hidden_sizes(unet)
        cross = unet.config.cross_attention_dim
        assert cross == CROSS_ATTENTION_DIM[kind], (cross, kind)

        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**IP_ENCODER_CONFIGS[kind], **_ENCODER_COMMON)).eval()
        _redraw_zeros(encoder)
        plain = diffusers.models.embeddings.ImageProjection(
            image_embed_dim=encoder.config.projection_dim, cross_attention_dim=cross,
            num_image_text_embeds=PLAIN_NUM_TOKENS)
        _redraw_zeros(plain)
        plain_file = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in plain.state_dict().items()}
        plain_file.update(_ip_layers(hidden_sizes, cross))
        plus = diffusers.models.embeddings.IPAdapterPlusImageProjection(
            embed_dims=encoder.config.hidden_size, output_dims=cross, **PLUS_CONFIG)
        _redraw_zeros(plus)
        plus_file = {f"image_proj.{k}": v for k, v in _resampler_original_keys(plus.state_dict()).items()}
        plus_file.update(_ip_layers(hidden_sizes, cross))

    files = IP_ADAPTER_FILES[kind]
    for variant, tensors in (("plain", plain_file), ("plus", plus_file)):
        sub, weight_name = files[variant]
        (staging / sub).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(staging / sub / weight_name),
                  metadata={"format": "pt"})
    first, *copies = IP_ADAPTER_IMAGE_ENCODERS[kind]
    encoder.save_pretrained(str(staging / first), safe_serialization=True)
    CLIPImageProcessor(size=IP_IMAGE_SIZE, crop_size=IP_IMAGE_SIZE).save_pretrained(str(staging / first))
    for copy in copies:
        shutil.copytree(staging / first, staging / copy)


def _cross_attention_hidden_sizes(unet) -> list:
    """The hidden size of each attn2 processor, in `unet.attn_processors` order, by diffusers' rule
    (`_convert_ip_adapter_attn_to_diffusers`: block_out_channels of the block the processor is in)."""
    channels = list(unet.config.block_out_channels)
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            size = channels[-1]
        elif name.startswith("up_blocks"):
            size = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            size = channels[int(name[len("down_blocks.")])]
        attention = unet.get_submodule(name[: -len(".processor")])
        assert attention.to_k.out_features == size, (name, attention.to_k.out_features, size)
        sizes.append(size)
    return sizes


def _ip_layers(hidden_sizes, cross) -> dict:
    import torch

    out = {}
    for i, size in enumerate(hidden_sizes):
        k = 2 * i + 1  # diffusers' key_id: 1, 3, 5, ... over the attn2 processors
        out[f"ip_adapter.{k}.to_k_ip.weight"] = torch.randn(size, cross) * IP_STD
        out[f"ip_adapter.{k}.to_v_ip.weight"] = torch.randn(size, cross) * IP_STD
    return out


# per Resampler layer, diffusers' name -> the original's: whole names, and prefixes of parameter names
_RESAMPLER_NAMES = {"attn.to_q.weight": "0.to_q.weight", "attn.to_out.0.weight": "0.to_out.weight",
                    "ff.1.net.0.proj.weight": "1.1.weight", "ff.1.net.2.weight": "1.3.weight"}
_RESAMPLER_PREFIXES = {"ln0.": "0.norm1.", "ln1.": "0.norm2.", "ff.0.": "1.0."}


def _resampler_original_keys(state: dict) -> dict:
    """diffusers' IPAdapterPlusImageProjection keys -> the original IP-Adapter Resampler's (the inverse of
    diffusers' `_convert_ip_adapter_image_proj_to_diffusers`, Plus branch)."""
    import torch

    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value  # latents, proj_in, proj_out, norm_out
            continue
        _, i, rest = key.split(".", 2)
        head = f"layers.{i}"
        prefix = next((p for p in _RESAMPLER_PREFIXES if rest.startswith(p)), None)
        if rest == "attn.to_k.weight":
            out[f"{head}.0.to_kv.weight"] = torch.cat([value, state[f"{head}.attn.to_v.weight"]], dim=0)
        elif rest == "attn.to_v.weight":
            continue  # in to_kv
        elif rest in _RESAMPLER_NAMES:
            out[f"{head}.{_RESAMPLER_NAMES[rest]}"] = value
        elif prefix is not None:
            out[f"{head}.{_RESAMPLER_PREFIXES[prefix]}{rest[len(prefix):]}"] = value
        else:
            raise KeyError(f"unexpected Resampler tensor {key!r}")
    return out


def _redraw_zeros(model) -> None:
    import torch

    with torch.no_grad():
        for _, param in model.named_parameters():
            if not param.any():
                param.normal_(0.0, RANDOMISED_STD)
