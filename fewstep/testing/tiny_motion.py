"""Tiny random-weight AnimateDiff parts (a MotionAdapter and a motion LoRA), built offline.

`tiny_motion_adapter()` writes a `diffusers.MotionAdapter` folder (`save_pretrained`, safetensors) that fits
the UNet of `tiny_pipeline("sd15")` (block_out_channels (16, 32), two levels, norm groups 8): diffusers'
`UNetMotionModel.from_unet2d(unet, adapter)` and
`AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), motion_adapter=adapter)` (and mindone's) take it
unchanged; a 64x64 video <-> latents (batch, 4, frames, 32, 32). `tiny_motion_lora()` writes a motion LoRA
folder in the layout of the released `guoyww/animatediff-motion-lora-*` repositories (what diffusers'
`scripts/convert_animatediff_motion_lora_to_diffusers.py` writes): one `diffusion_pytorch_model.safetensors`
that `pipe.load_lora_weights(folder, weight_name=MOTION_LORA_WEIGHT_NAME, adapter_name=...)` loads.
`tiny_sdxl_motion_adapter()` writes the SDXL counterpart (no mid-block motion module, as the released SDXL
adapter) for `AnimateDiffSDXLPipeline.from_pretrained(tiny_pipeline("sdxl"), motion_adapter=adapter)`.

Folders are cached like the other tiny models (same cache directory, same marker file recording kind, seed,
this module's FORMAT_VERSION and tiny_models' version; built in a staging folder and moved in place). The
same seed always gives the same tensors, and the caller's torch RNG is left alone (`torch.random.fork_rng`).

Why some weights are redrawn. A fresh diffusers MotionAdapter keeps torch's default (non-zero) Linear
weights, including the temporal transformers' `proj_out` (the original AnimateDiff zero-initialises that
one; diffusers does not), but every normalisation shift starts at exactly zero: each motion module's
GroupNorm `norm.bias` and its transformer block's LayerNorm `norm1/norm2/norm3.bias` (44 tensors for the
config below). A trained adapter has none of those zeros, and a port that dropped a norm bias would still
match bitwise, so every all-zero parameter is redrawn (normal, std RANDOMISED_STD). Nothing else is changed.

Motion LoRA layout (float32; original AnimateDiff LoRA factors, no alphas, so diffusers scales by 1):

    unet.{block}.motion_modules.{i}.transformer_blocks.0.attn{1,2}.processor.{to_q,to_k,to_v,to_out}_lora.down.weight  [rank, in]
    unet.{block}.motion_modules.{i}.transformer_blocks.0.attn{1,2}.processor.{to_q,to_k,to_v,to_out}_lora.up.weight    [out, rank]

with {block} each of `down_blocks.{0,1}`, `mid_block`, `up_blocks.{0,1}` (every motion module of the adapter:
2 + 2 + 1 + 3 + 3 = 11, so 11 x 2 attentions x 4 projections x 2 factors = 176 keys). diffusers drops
".processor." and maps `to_q_lora.down` -> `to_q.lora_A`, `to_out_lora` -> `to_out.0` on load. Factors are
drawn with std MOTION_LORA_STD, so that the LoRA visibly changes the frames at the weights users pass (1.0,
1.2).

Only torch, diffusers and safetensors are used, imported lazily inside functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from fewstep.testing.tiny_models import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from fewstep.testing.tiny_models import UNET_BLOCK_OUT_CHANNELS, UNET_NORM_GROUPS, cached_folder, default_cache_dir

# Bump whenever a config, a layout or a randomisation below changes (cached folders are then rebuilt). The
# adapter is shaped after tiny_models' SD 1.5 UNet, so the marker also records tiny_models' version.
FORMAT_VERSION = 1

# Fits the tiny SD 1.5 UNet: one motion module per resnet (layers_per_block 2; the up blocks get 3), heads of
# 8 (16 ch) and 16 (32 ch) channels, a motion module in the mid block, up to 32 frames (positional table).
MOTION_ADAPTER_CONFIG = dict(
    block_out_channels=tuple(UNET_BLOCK_OUT_CHANNELS), motion_layers_per_block=2, motion_num_attention_heads=2,
    motion_norm_num_groups=UNET_NORM_GROUPS, motion_max_seq_length=32, use_motion_mid_block=True,
)
RANDOMISED_STD = 0.1

# Fits the tiny SDXL UNet (DownBlock2D 16 ch, then CrossAttnDownBlock2D 32 ch with transformer depth 2):
# as the released SDXL adapter (guoyww/animatediff-motion-adapter-sdxl-beta) and diffusers' own
# AnimateDiffSDXL fast test, no motion module in the mid block; up to 32 frames.
SDXL_MOTION_ADAPTER_CONFIG = dict(
    block_out_channels=tuple(UNET_BLOCK_OUT_CHANNELS), motion_layers_per_block=2, motion_num_attention_heads=2,
    motion_norm_num_groups=UNET_NORM_GROUPS, motion_max_seq_length=32, use_motion_mid_block=False,
)

MOTION_LORA_WEIGHT_NAME = "diffusion_pytorch_model.safetensors"
MOTION_LORA_RANK = 4
MOTION_LORA_STD = 0.2
MOTION_LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")

PathLike = Optional[Union[str, os.PathLike]]


def tiny_motion_adapter(seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny MotionAdapter for the tiny SD 1.5 pipeline and return its folder.

    The adapter is `MotionAdapter(**MOTION_ADAPTER_CONFIG)` built after `torch.manual_seed(seed)`, with its
    all-zero parameters (the norm biases, see the module docstring) redrawn (normal, std 0.1).
    path: default `<cache>/motion-adapter-<seed>` (see `default_cache_dir`).
    """
    seed = int(seed)
    name = "motion-adapter"

    def write(staging: Path) -> None:
        build_motion_adapter(seed).save_pretrained(str(staging), safe_serialization=True)

    return cached_folder(_target(path, name, seed), _marker(name, seed), write, what="tiny MotionAdapter")


def tiny_sdxl_motion_adapter(seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny SDXL MotionAdapter for the tiny SDXL pipeline and return its folder.

    `MotionAdapter(**SDXL_MOTION_ADAPTER_CONFIG)` after `torch.manual_seed(seed)`, all-zero parameters
    redrawn as in `tiny_motion_adapter`. `diffusers.AnimateDiffSDXLPipeline.from_pretrained(tiny_pipeline("sdxl"),
    motion_adapter=...)` takes it; a 64x64 video <-> latents (batch, 4, frames, 32, 32).
    path: default `<cache>/motion-adapter-sdxl-<seed>`.
    """
    seed = int(seed)
    name = "motion-adapter-sdxl"

    def write(staging: Path) -> None:
        build_sdxl_motion_adapter(seed).save_pretrained(str(staging), safe_serialization=True)

    return cached_folder(_target(path, name, seed), _marker(name, seed), write, what="tiny SDXL MotionAdapter")


def tiny_motion_lora(seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny motion LoRA for `tiny_motion_adapter()` and return its folder.

    The folder holds MOTION_LORA_WEIGHT_NAME with rank-4 factors for every motion-module attention
    projection (see the module docstring for the keys), drawn after `torch.manual_seed(seed)`.
    Load it with `pipe.load_lora_weights(folder, weight_name=MOTION_LORA_WEIGHT_NAME, adapter_name=...)`.
    path: default `<cache>/motion-lora-<seed>`.
    """
    seed = int(seed)
    name = "motion-lora"

    def write(staging: Path) -> None:
        from safetensors.torch import save_file

        save_file(motion_lora_state_dict(seed), str(staging / MOTION_LORA_WEIGHT_NAME))

    return cached_folder(_target(path, name, seed), _marker(name, seed), write, what="tiny motion LoRA")


def build_motion_adapter(seed: int = 0):
    """The `diffusers.MotionAdapter` that `tiny_motion_adapter(seed)` saves, built in memory."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = diffusers.MotionAdapter(**MOTION_ADAPTER_CONFIG).eval()
        with torch.no_grad():
            for param in adapter.parameters():  # named_parameters order: fixed for a config
                if not param.any():
                    param.normal_(0.0, RANDOMISED_STD)
    return adapter


def build_sdxl_motion_adapter(seed: int = 0):
    """The `diffusers.MotionAdapter` that `tiny_sdxl_motion_adapter(seed)` saves, built in memory."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = diffusers.MotionAdapter(**SDXL_MOTION_ADAPTER_CONFIG).eval()
        with torch.no_grad():
            for param in adapter.parameters():  # the norm biases start at zero (see the module docstring)
                if not param.any():
                    param.normal_(0.0, RANDOMISED_STD)
    return adapter


def motion_attention_layers() -> dict:
    """{attention path in the MotionAdapter (as in UNetMotionModel): {projection: (in, out) features}} for
    every motion-module attention, in `named_modules` order, e.g.
    "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1": {"to_q": (16, 16), ..., "to_out": (16, 16)}."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):  # the shapes are all we read; the init draws are thrown away
        adapter = diffusers.MotionAdapter(**MOTION_ADAPTER_CONFIG)
    layers = {}
    for name, module in adapter.named_modules():
        if ".motion_modules." in name and name.rsplit(".", 1)[-1] in ("attn1", "attn2"):
            linears = {p: getattr(module, p) for p in ("to_q", "to_k", "to_v")}
            linears["to_out"] = module.to_out[0]
            layers[name] = {p: (lin.in_features, lin.out_features) for p, lin in linears.items()}
    return layers


def motion_lora_state_dict(seed: int = 0) -> dict:
    """The tensors `tiny_motion_lora(seed)` saves: {key: float32 torch tensor}, in the released layout."""
    import torch

    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for attention, projections in motion_attention_layers().items():
            for proj in MOTION_LORA_PROJECTIONS:
                fan_in, fan_out = projections[proj]
                key = f"unet.{attention}.processor.{proj}_lora"
                out[f"{key}.down.weight"] = torch.randn(MOTION_LORA_RANK, fan_in) * MOTION_LORA_STD
                out[f"{key}.up.weight"] = torch.randn(fan_out, MOTION_LORA_RANK) * MOTION_LORA_STD
    return {k: v.contiguous() for k, v in out.items()}


def _marker(name: str, seed: int) -> dict:
    return {"kind": name, "seed": seed, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}


def _target(path: PathLike, name: str, seed: int) -> Path:
    return Path(path) if path is not None else default_cache_dir() / f"{name}-{seed}"
